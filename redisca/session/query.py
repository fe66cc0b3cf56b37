"""Queries over indexed fields: ``session.query(User).filter(...)``.

Queries are generative (each method returns a new query), so a stored query
can be reused and refined. They read what is committed in Redis; instances
already in the session are returned as they are in the session.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import attrs

from ..errors import MultipleResultsFound, NotFound, QueryError
from ..mapping import instrument
from ..mapping.expressions import Expression, Ordering, branches
from ..mapping.keys import decode_id
from ..mapping.mapper import MappedField, Mapper
from . import executor, loading, queryscript, shardquery
from .io import Steps
from .querycompile import (
    NO_CURSOR,
    Cursor,
    Filters,
    ScriptCall,
    Union,
    compile_query,
    compile_union,
    order_field,
    ordering_field,
    score_arg,
    sort_filters,
    union_ordering_field,
)

if TYPE_CHECKING:
    from .session import Session

T = TypeVar("T")

#: ``_run``'s limit when the query's own applies.
_SAME: Any = object()


@attrs.frozen
class Query(Generic[T]):
    """A query on indexed fields of one class: ``session.query(User).filter(...)``.

    Frozen, so refining a stored query never changes it for its other users.
    """

    session: Session
    mapper: Mapper
    #: What filter() was given (conditions, ``&`` / ``|`` combinations), ANDed.
    conditions: tuple[Expression, ...] = ()
    ordering: Ordering | None = None
    offset_: int = 0
    limit_: int | None = None
    preloads: tuple[Any, ...] = ()
    #: Keyset pagination: the instance or id the results start strictly after.
    after_: Any = None
    #: The conditions sorted by index, worked out once by filter() for every query
    #: refined from this one (a lookup runs ``filter(...).one()``: one sort, not three).
    #: A :class:`Union` of one sorted branch each when an OR leaves several branches.
    _filters: Filters | Union | None = attrs.field(
        default=None, eq=False, repr=False, alias="_filters"
    )

    # -- building ------------------------------------------------------------

    # Each refinement calls the constructor with every field by position: ``attrs.evolve``
    # costs several µs, a generic copy taking keywords 0.5 µs more than this, and every
    # lookup builds two queries (``one()`` and ``first()`` build none: see ``_all``).

    def filter(self, *conditions: Expression) -> Self:
        """AND the conditions (``User.age >= 18``, ``User.email == v``, combinations
        with ``&`` and ``|``, ``User.role.in_(...)``) to this query."""
        for cond in conditions:
            if not isinstance(cond, Expression):
                raise QueryError(f"filter() takes conditions like User.age >= 18, got {cond!r}")
        combined = self.conditions + conditions
        # Sorting fails now, naming the field; its result is kept for running the query.
        filters = _sort(self.mapper, combined)
        return self.__class__(
            self.session,
            self.mapper,
            combined,
            self.ordering,
            self.offset_,
            self.limit_,
            self.preloads,
            self.after_,
            filters,
        )

    def filter_by(self, **values: Any) -> Self:
        """Equality conditions by attribute name: ``filter_by(email=v)``."""
        conditions = []
        for name, value in values.items():
            field = self.mapper.by_name.get(name)
            if field is None:
                raise QueryError(f"{self.mapper.class_.__name__} has no mapped attribute {name!r}")
            conditions.append(field.attribute == value)
        return self.filter(*conditions)

    def order_by(self, ordering: Any) -> Self:
        """Order by a range-indexed attribute: ``order_by(User.age)`` or ``User.age.desc()``."""
        if not isinstance(ordering, Ordering):
            ordering = Ordering(ordering)
        order_field(self.mapper, ordering)  # fail now, naming the field
        return self.__class__(
            self.session,
            self.mapper,
            self.conditions,
            ordering,
            self.offset_,
            self.limit_,
            self.preloads,
            self.after_,
            self._filters,
        )

    def offset(self, n: int) -> Self:
        """Skip the first ``n`` results; skipped rows are never sent by the server.

        A deep offset costs the server the rows it skips (when conditions other than
        the order's own range must be probed); :meth:`after` does not."""
        return self.__class__(
            self.session,
            self.mapper,
            self.conditions,
            self.ordering,
            _count_arg("offset", n),
            self.limit_,
            self.preloads,
            self.after_,
            self._filters,
        )

    def limit(self, n: int | None) -> Self:
        """At most ``n`` results (``None``: no limit), cut on the server."""
        limit = None if n is None else _count_arg("limit", n)
        return self.__class__(
            self.session,
            self.mapper,
            self.conditions,
            self.ordering,
            self.offset_,
            limit,
            self.preloads,
            self.after_,
            self._filters,
        )

    def after(self, entity_or_id: Any) -> Self:
        """Keyset pagination: only results strictly after this one in the query's order
        (its stored position: (order value, id)), so a page costs what it returns
        however deep it is. Pass the last instance of the previous page, or its id;
        ``None`` starts from the beginning."""
        if entity_or_id is not None and not isinstance(
            entity_or_id, str | int | self.mapper.class_
        ):
            raise QueryError(
                f"after() takes a {self.mapper.class_.__name__} or an id, got {entity_or_id!r}"
            )
        if isinstance(entity_or_id, bool):
            raise QueryError(f"after() takes a {self.mapper.class_.__name__} or an id, got a bool")
        return self.__class__(
            self.session,
            self.mapper,
            self.conditions,
            self.ordering,
            self.offset_,
            self.limit_,
            self.preloads,
            entity_or_id,
            self._filters,
        )

    def preload(self, *attributes: Any) -> Self:
        """Load these references of all results in one more round trip (no N+1)."""
        return self.__class__(
            self.session,
            self.mapper,
            self.conditions,
            self.ordering,
            self.offset_,
            self.limit_,
            self.preloads + attributes,
            self.after_,
            self._filters,
        )

    # -- running -------------------------------------------------------------

    def ids(self) -> list[str]:
        """Ids of the matching entities, in query order; nothing is loaded."""
        return executor.drive(self._ids())

    def count(self) -> int:
        """How many entities match (within offset and limit), computed on the server.

        With no condition it is one ``ZCARD``; with a range condition on the order
        field only, two ``ZCOUNT``; otherwise the matches are counted by the script.
        An expiring model's count excludes expired entities, which costs the smaller of
        the candidates and the expired entities (docs/queries.rst, "Expired entities")."""
        return executor.drive(self._count())

    def all(self) -> list[T]:
        """The matching instances, in query order, read with the ids in one atomic step.

        Instances the session holds loaded are returned as they are in the session."""
        return self._load(self.limit_)

    def __iter__(self) -> Iterator[T]:
        return iter(self.all())

    def first(self) -> T | None:
        """The first result, or ``None``."""
        found = self._load(1)
        return found[0] if found else None

    def one_or_none(self) -> T | None:
        """The only result, or ``None``; more than one raises ``MultipleResultsFound``."""
        return self._only(self._load(self._at_most_two()))

    def one(self) -> T:
        """The only result; none raises ``NotFound``, more than one ``MultipleResultsFound``."""
        return self._required(self._only(self._load(self._at_most_two())))

    # -- the terminals as protocols (redisca.session.io), run by either driver --

    def _ids(self) -> Steps[list[str]]:
        reply, call = yield from self._run(b"ids")
        return self._decode(reply[0], call)

    def _count(self) -> Steps[int]:
        return int((yield from self._run(b"count"))[0][0])

    def _load(self, limit: int | None) -> list[T]:
        """:meth:`_all` with blocking I/O, without its generators (every lookup comes
        here): the same call, the same results, the same preloads."""
        if self.mapper.shards > 1:
            return executor.drive(self._all(limit))
        call = self._call(b"load", limit)
        if call is _NOTHING:
            return []
        results = self._results(queryscript.run(self._client(), call), call)
        if self.mapper.collections and results:
            executor.drive(self._members(results))
        if self.preloads and results:
            self.session.preload(results, *self.preloads)
        return results

    def _results(self, reply: Any, call: ScriptCall) -> list[T]:
        """The instances of a ``load`` reply (``[ids, hashes, work]``)."""
        ids, hashes, _ = reply
        if not ids:
            return []
        found = loading.from_hashes(
            self.session.identity_map, self.mapper, self._decode(ids, call), hashes
        )
        return [typing.cast(T, obj) for obj in found if obj is not None]

    def _members(self, results: list[Any]) -> Steps[None]:
        """The page's collections: the query script reads the hashes only, so they take
        one more round trip for the whole page."""
        yield from loading.load_members_steps(
            self.session.identity_map, self._client(), self.mapper, results
        )

    def _all(self, limit: int | None) -> Steps[list[T]]:
        """:meth:`all` with another limit (no refined copy: ``one()`` runs this)."""
        reply, call = yield from self._run(b"load", limit)
        results = self._results(reply, call)
        if self.mapper.collections and results:
            yield from self._members(results)
        session = self.session
        if self.preloads and results:
            targets = session._unloaded_targets(results, self.preloads)
            if targets:
                yield from loading.load_states_steps(
                    session.identity_map, session.bind_for, targets
                )
        return results

    # ``first``, ``one`` and ``one_or_none`` run ``_all`` and judge its list in plain
    # code (shared with the async query): each generator layer costs every lookup.

    def _at_most_two(self) -> int:
        return 2 if self.limit_ is None else self.limit_

    def _only(self, found: list[T]) -> T | None:
        if len(found) > 1:
            raise MultipleResultsFound(f"more than one {self.mapper.class_.__name__} matched")
        return found[0] if found else None

    def _required(self, found: T | None) -> T:
        if found is None:
            raise NotFound(f"no {self.mapper.class_.__name__} matched")
        return found

    # -- internals -----------------------------------------------------------

    def _sorted(self) -> Filters | Union:
        if self._filters is not None:
            return self._filters
        return _sort(self.mapper, self.conditions)

    def _client(self) -> Any:
        return self.session.bind_for(self.mapper)

    def _run(self, mode: bytes, limit: Any = _SAME) -> Steps[tuple[Any, ScriptCall]]:
        """The script's reply (``[ids, hashes, work]``, or ``[count, work]`` for a count;
        ``work``: the index entries the server read, which the tests bound) and its call."""
        if self.mapper.shards > 1:
            if type(self._sorted()) is Union:  # no branch (_sort refuses several)
                return _nothing(mode), _NOTHING
            return (yield from self._sharded(mode, limit))
        call = self._call(mode, limit)
        if call is _NOTHING:
            return _nothing(mode), call
        return (yield from queryscript.run_steps(self._client(), call)), call

    def _sharded(self, mode: bytes, limit: Any) -> Steps[tuple[Any, ScriptCall]]:
        """:meth:`_run` of a model spread over shards (:mod:`~redisca.session.shardquery`)."""
        filters = self._sorted()
        assert type(filters) is Filters  # _sort refuses several branches on shards
        by = ordering_field(self.mapper, filters, self.ordering)
        return (
            yield from shardquery.run_steps(
                self._client(),
                self.mapper,
                branches(self.conditions)[0],
                by,
                mode=mode,
                descending=self.ordering is not None and self.ordering.descending,
                offset=self.offset_,
                limit=self.limit_ if limit is _SAME else limit,
                cursor=self._cursor(by),
            )
        )

    def _call(self, mode: bytes, limit: Any = _SAME) -> ScriptCall:
        """This query's script call in ``mode`` (see :meth:`_run`)."""
        filters = self._sorted()
        descending = self.ordering is not None and self.ordering.descending
        if isinstance(filters, Union):
            if not filters.branches:
                return _NOTHING
            return compile_union(
                self.mapper,
                filters,
                self.ordering,
                mode=mode,
                descending=descending,
                offset=self.offset_,
                limit=self.limit_ if limit is _SAME else limit,
                cursor=self._cursor(union_ordering_field(self.mapper, self.ordering)),
            )
        by = ordering_field(self.mapper, filters, self.ordering)
        return compile_query(
            self.mapper,
            filters,
            by,
            mode=mode,
            descending=descending,
            offset=self.offset_,
            limit=self.limit_ if limit is _SAME else limit,
            cursor=self._cursor(by),
        )

    def _cursor(self, by: MappedField | None) -> Cursor:
        """``after()``'s position: an instance's stored order value when the session
        read it (so the page boundary stays where its reader saw it), else looked up."""
        target = self.after_
        if target is None:
            return NO_CURSOR
        if not isinstance(target, self.mapper.class_):
            ident = self.mapper.id_attribute.coerce(target)
            return (b"s", b"0", ident.encode()) if by is None else (b"i", b"", ident.encode())
        ident = self.mapper.identity(target)
        if ident is None:
            raise QueryError("after(): that instance has no id yet")
        if by is None:
            return (b"s", b"0", ident.encode())
        state = instrument.state_of(target)
        if state is None or by not in state.snapshot:
            return (b"i", b"", ident.encode())
        raw = state.snapshot[by]
        score = float("inf") if raw is None else by.score(raw)
        return (b"s", score_arg(score), ident.encode())

    def _decode(self, ids: list[bytes], call: ScriptCall) -> list[str]:
        try:
            return [i.decode() for i in ids]
        except UnicodeDecodeError:  # data another program wrote: name the indexes read
            where = b" or ".join(dict.fromkeys(call.keys[1:])) or call.keys[0]
            return [decode_id(i, where) for i in ids]


#: The call of a query that matches nothing (``in_([])``): never sent.
_NOTHING = ScriptCall((), (), ())


def _nothing(mode: bytes) -> Any:
    """The reply the script gives when nothing matches."""
    return [0, 0] if mode == b"count" else [[], [], 0]


def _sort(mapper: Mapper, conditions: tuple[Expression, ...]) -> Filters | Union:
    """The conditions' AND-branches sorted by index: one branch (no OR, or ORs that
    leave one) compiles as it always has; several make a :class:`Union`. Every value
    is checked here, as ``==`` and ranges check theirs."""
    found = branches(conditions)
    if not found:
        return Union(())
    if len(found) == 1:
        return sort_filters(mapper, found[0])
    if mapper.shards > 1:
        raise QueryError(
            f"{mapper.class_.__name__} is sharded: its queries take no OR or in_() of "
            "several values (run one query per branch)"
        )
    return Union(tuple(sort_filters(mapper, branch) for branch in found))


def _count_arg(name: str, n: Any) -> int:
    if type(n) is not int:
        raise QueryError(f"{name}() takes an int >= 0, got {n!r}")
    if n < 0:
        raise QueryError(f"{name} must be >= 0, got {n}")
    return n


__all__ = ["Query"]

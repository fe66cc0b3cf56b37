"""Queries over indexed fields: ``session.query(User).filter(...)``.

Queries are generative (each method returns a new query), so a stored query
can be reused and refined. They read what is committed in Redis; instances
already in the session are returned as they are in the session.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from ..errors import MultipleResultsFound, NotFound, OperationalError, QueryError
from ..mapping.expressions import Condition, Ordering
from ..mapping.keys import INDEX_KINDS, decode_id
from ..mapping.mapper import Mapper
from . import executor
from .querycompile import Filters, compile_ids, membership_checks, order_field, sort_filters

if TYPE_CHECKING:
    from .session import Session

T = TypeVar("T")


@attrs.frozen
class Query(Generic[T]):
    """A query on indexed fields of one class: ``session.query(User).filter(...)``.

    Frozen, so refining a stored query never changes it for its other users.
    """

    session: Session
    mapper: Mapper
    conditions: tuple[Condition, ...] = ()
    ordering: Ordering | None = None
    offset_: int = 0
    limit_: int | None = None
    preloads: tuple[Any, ...] = ()
    #: The conditions sorted by index, worked out once by filter() for every query
    #: refined from this one (a lookup runs ``filter(...).one()``: one sort, not three).
    _filters: Filters | None = attrs.field(default=None, eq=False, repr=False, alias="_filters")

    # -- building ------------------------------------------------------------

    def _with(self, **changes: Any) -> Query[T]:
        """A refined copy (``attrs.evolve`` costs several µs per call: queries are hot)."""
        fields = {
            "conditions": self.conditions,
            "ordering": self.ordering,
            "offset_": self.offset_,
            "limit_": self.limit_,
            "preloads": self.preloads,
            "_filters": self._filters,
            **changes,
        }
        return Query(self.session, self.mapper, **fields)

    def filter(self, *conditions: Condition) -> Query[T]:
        """AND the conditions (``User.age >= 18``, ``User.email == v``) to this query."""
        for cond in conditions:
            if not isinstance(cond, Condition):
                raise QueryError(f"filter() takes conditions like User.age >= 18, got {cond!r}")
        combined = self.conditions + conditions
        # Sorting fails now, naming the field; its result is kept for running the query.
        return self._with(conditions=combined, _filters=sort_filters(self.mapper, combined))

    def filter_by(self, **values: Any) -> Query[T]:
        """Equality conditions by attribute name: ``filter_by(email=v)``."""
        conditions = []
        for name, value in values.items():
            field = self.mapper.by_name.get(name)
            if field is None:
                raise QueryError(f"{self.mapper.class_.__name__} has no mapped attribute {name!r}")
            conditions.append(field.attribute == value)
        return self.filter(*conditions)

    def order_by(self, ordering: Any) -> Query[T]:
        """Order by a range-indexed attribute: ``order_by(User.age)`` or ``User.age.desc()``."""
        if not isinstance(ordering, Ordering):
            ordering = Ordering(ordering)
        order_field(self.mapper, ordering)  # fail now, naming the field
        return self._with(ordering=ordering)

    def offset(self, n: int) -> Query[T]:
        """Skip the first ``n`` results; skipped rows are never sent by the server."""
        if n < 0:
            raise QueryError("offset must be >= 0")
        return self._with(offset_=n)

    def limit(self, n: int | None) -> Query[T]:
        """At most ``n`` results (``None``: no limit), cut on the server."""
        if n is not None and n < 0:
            raise QueryError("limit must be >= 0")
        return self._with(limit_=n)

    def preload(self, *attributes: Any) -> Query[T]:
        """Load these references of all results in one more round trip (no N+1)."""
        return self._with(preloads=self.preloads + attributes)

    # -- running -------------------------------------------------------------

    def ids(self) -> list[str]:
        """Ids of the matching entities, in query order; nothing is loaded."""
        filters = self._sorted()
        if filters.unique:
            return self._unique_ids(filters)
        return self._decode(self._run_ids(filters, count=False), filters)

    def count(self) -> int:
        """How many entities match (within offset and limit), computed on the server."""
        filters = self._sorted()
        if filters.unique:
            return len(self._unique_ids(filters))  # offset and limit apply, as below
        total = int(self._run_ids(filters, count=True))
        total = max(0, total - self.offset_)
        return total if self.limit_ is None else min(total, self.limit_)

    def all(self) -> list[T]:
        """The matching instances, in query order, loaded in one round trip."""
        ids = self.ids()
        if not ids:
            return []
        found = self.session.get_many(self.mapper.class_, ids)
        results = [typing.cast(T, obj) for obj in found if obj is not None]
        if self.preloads:
            self.session.preload(results, *self.preloads)
        return results

    def __iter__(self) -> Iterator[T]:
        return iter(self.all())

    def first(self) -> T | None:
        """The first result, or ``None``."""
        found = self.limit(1).all()
        return found[0] if found else None

    def one_or_none(self) -> T | None:
        """The only result, or ``None``; more than one raises ``MultipleResultsFound``."""
        found = self.limit(2).all() if self.limit_ is None else self.all()
        if len(found) > 1:
            raise MultipleResultsFound(f"more than one {self.mapper.class_.__name__} matched")
        return found[0] if found else None

    def one(self) -> T:
        """The only result; none raises ``NotFound``, more than one ``MultipleResultsFound``."""
        found = self.one_or_none()
        if found is None:
            raise NotFound(f"no {self.mapper.class_.__name__} matched")
        return found

    # -- internals -----------------------------------------------------------

    def _sorted(self) -> Filters:
        if self._filters is not None:
            return self._filters
        return sort_filters(self.mapper, self.conditions)

    def _client(self) -> Any:
        return self.session.bind_for(self.mapper)

    def _run_ids(self, filters: Filters, *, count: bool) -> Any:
        plan = compile_ids(
            self.mapper, filters, self.ordering, self.offset_, self.limit_, count=count
        )
        if plan.transactional:
            with executor.connection(self._client()) as conn:
                replies = executor.transaction(conn, plan.commands)
            assert replies is not None  # nothing is watched
        else:
            replies = executor.run(self._client(), plan.commands)
        for command, reply in zip(plan.commands, replies, strict=True):
            if isinstance(reply, Exception):
                raise OperationalError(
                    f"Redis could not run the query: {self._describe(command)} answered {reply}",
                    reply,
                )
        reply = replies[plan.reply]
        if plan.sort_ids:
            return self._slice(sorted(reply))
        return reply

    def _describe(self, command: Any) -> str:
        """A failed query command by name and index keys (another program's data in them)."""
        layout = self.mapper.layout
        keys = [
            arg.decode(errors="replace")[:200]
            for arg in command[1:]
            if isinstance(arg, bytes) and layout.parse(arg).kind in INDEX_KINDS
        ]
        return " ".join([command[0].decode(), *keys])

    def _slice(self, ids: list[Any]) -> list[Any]:
        end = None if self.limit_ is None else self.offset_ + self.limit_
        return ids[self.offset_ : end]

    def _unique_ids(self, filters: Filters) -> list[str]:
        owners = executor.run(self._client(), [(b"HGET", *slot) for slot in filters.unique])
        if any(o is None or isinstance(o, Exception) for o in owners) or len(set(owners)) != 1:
            return []
        ident = decode_id(owners[0], filters.unique[0][0])
        commands, windows = membership_checks(self.mapper, filters, ident)
        if commands:
            replies = executor.run(self._client(), commands)
            for reply, window in zip(replies, windows, strict=True):
                if window is None and not reply:
                    return []
                if window is not None and (reply is None or not window.contains(float(reply))):
                    return []
        return self._slice([ident])

    def _decode(self, ids: list[bytes], filters: Filters) -> list[str]:
        try:
            return [i.decode() for i in ids]
        except UnicodeDecodeError:  # data another program wrote: name the keys read
            layout = self.mapper.layout
            ranges = [layout.range_index(field.hash_field) for field, _ in filters.ranges]
            where = b" or ".join([*filters.eq, *ranges] or [layout.all_ids])
            return [decode_id(i, where) for i in ids]


__all__ = ["Query"]

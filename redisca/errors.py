"""One exception family.

Every error redisca raises derives from :class:`RediscaError`; where a builtin
describes the same kind of failure (a bad value, a missing key) the redisca
error also derives from that builtin, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from typing import Any

import attrs


class RediscaError(Exception):
    """Base class of every redisca error."""


class MappingError(RediscaError, TypeError):
    """A class or attribute cannot be mapped (raised at mapping time)."""


class ValidationError(RediscaError, ValueError):
    """A value breaks a field's rules; raised before anything reaches Redis."""

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class DecodeError(RediscaError, ValueError):
    """A stored value cannot be read back by its field's codec."""

    def __init__(self, message: str, *, key: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.field = field


class NotFound(RediscaError, LookupError):
    """The key an operation needs does not exist in Redis."""


class InvalidRequestError(RediscaError):
    """The session cannot do what was asked in its current state."""


class DetachedInstanceError(InvalidRequestError, AttributeError):
    """An unloaded attribute was read on an instance that has no session to load it."""


class MissingLoadError(InvalidRequestError, AttributeError):
    """An unloaded attribute was read on an instance of an ``AsyncSession``: loading it
    would be I/O hidden in an attribute read, which cannot be awaited. The message
    names the attribute and the awaited call that loads it."""


class QueryError(RediscaError, ValueError):
    """A query asks for something the indexes cannot answer."""


class MultipleResultsFound(RediscaError, LookupError):
    """``Query.one()`` or ``one_or_none()`` matched more than one entity."""


class IntegrityError(RediscaError, ValueError):
    """A commit would break a key, uniqueness or reference rule; nothing was written.

    For a reference (``Reference(..., on_delete=...)``), ``referrer`` is the key of
    the entity that refers, ``field`` its attribute and ``target`` the key it
    refers to; ``None`` for other rules. A ``ValueError``: the data, not the call, is wrong.
    """

    def __init__(
        self,
        message: str,
        *,
        referrer: str | None = None,
        field: str | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__(message)
        self.referrer = referrer
        self.field = field
        self.target = target


class UniqueViolation(IntegrityError):
    """A unique value is already owned by another entity, or claimed by two objects of
    one commit.

    ``owner`` is the id of the entity Redis says holds the value; ``None`` when two
    pending objects of the commit claim it (refused before anything is sent: neither
    owns it), and then ``claimants`` are those two objects."""

    def __init__(
        self,
        message: str,
        *,
        field: str,
        value: Any,
        owner: str | None,
        claimants: tuple[Any, ...] = (),
    ) -> None:
        super().__init__(message, field=field)
        self.field: str = field
        self.value = value
        self.owner = owner
        #: Alias of :attr:`owner`, for readers who think of it as an id.
        self.owner_id = owner
        #: The two objects of one commit claiming the value (``owner`` is ``None``).
        self.claimants = claimants


class ConflictError(RediscaError):
    """A concurrent writer kept changing watched keys; nothing was written."""


class StaleDataError(ConflictError):
    """The entity changed (or vanished) in Redis since this session loaded it."""


class OperationalError(RediscaError):
    """Talking to Redis failed; the original exception is kept in ``.orig``.

    ``outcome_unknown`` is true when the connection failed after ``EXEC`` was
    sent: Redis may or may not have applied the transaction (see the
    Guarantees page for what committing again does then).
    """

    def __init__(
        self, message: str, orig: BaseException | None = None, *, outcome_unknown: bool = False
    ) -> None:
        super().__init__(message)
        self.orig = orig
        self.outcome_unknown = outcome_unknown


class ClusterNodeError(OperationalError):
    """A plain (non-cluster) client talks to a Redis Cluster node.

    The server answered ``MOVED``, ``ASK``, ``CROSSSLOT``, ``TRYAGAIN`` or
    ``CLUSTERDOWN``: connect with ``redis.cluster.RedisCluster`` (or set
    ``REDISCA_CLUSTER=1`` with ``REDIS_URL`` naming a node) instead. Raised wherever
    such a reply is read, so it is never taken for data.
    """


class UncommittedChangesWarning(RuntimeWarning):
    """A session was closed (``close()``, the end of its ``with`` block) or garbage
    collected while it held changes no commit wrote: new, changed or deleted
    instances, or queued commands. They are dropped; the warning names them, as
    losing writes without a word is the worst way to lose them. Leaving a ``with``
    block because of an exception does not warn (the exception says why), nor does
    closing after :meth:`~redisca.Session.rollback`.

    A warning, not an error (it derives from ``RuntimeWarning``, not from
    :class:`~redisca.RediscaError`): ``warnings.simplefilter("error", UncommittedChangesWarning)``
    turns it into one. The Flask extension's warning is this class
    (``redisca.flask.UncommittedChangesWarning``)."""


@attrs.frozen
class BulkTransaction:
    """One transaction of the chunk a :class:`BulkAddError` stopped at: a chunk of a
    sharded model on a cluster is one ``MULTI``/``EXEC`` per shard, run in parallel,
    and each may end its own way."""

    #: The shard (0 to ``shards - 1``) of the entities, or ``None`` for a chunk that
    #: is one transaction (a model of one shard, or any model on one server).
    shard: int | None
    #: The objects of the input this transaction inserts (referenced targets cascaded
    #: into the chunk are not listed: they go with their own model's transaction).
    entities: tuple[Any, ...]
    #: ``"written"``, ``"not written"`` or ``"unknown"`` (the connection failed after
    #: ``EXEC`` was sent).
    outcome: str


class BulkAddError(RediscaError):
    """:meth:`Session.bulk_add <redisca.Session.bulk_add>` stopped at a chunk.

    Every chunk before it is written; of this chunk, ``unwritten`` are not and
    ``in_doubt`` may be (the connection failed after ``EXEC`` was sent), the rest are
    (only a sharded model's chunk on a cluster, one transaction per shard, is written in
    part); the input from ``next_index`` on was not tried. The cause, a :class:`UniqueViolation`,
    :class:`IntegrityError`, :class:`ValidationError`, ... is ``error`` (and
    ``__cause__``). ``bulk_add(exc.unwritten + exc.in_doubt)`` then the input from
    ``next_index`` completes the work: an in-doubt object given to ``bulk_add`` again is
    recognised if its earlier transaction was applied.
    """

    def __init__(
        self,
        message: str,
        *,
        error: RediscaError,
        written: int,
        first_unwritten: Any,
        entity: Any = None,
        outcome_unknown: bool = False,
        unwritten: list[Any] | None = None,
        in_doubt: list[Any] | None = None,
        next_index: int | None = None,
        transactions: list[BulkTransaction] | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(message)
        #: The error that stopped the chunk.
        self.error = error
        #: How many objects of the input are written: all chunks before this one, and
        #: those of this chunk whose transaction was (a sharded model's, on a cluster).
        self.written = written
        #: The position of :attr:`first_unwritten` in the input (equal to :attr:`written`
        #: unless part of the chunk is written).
        self.index = written if index is None else index
        #: The first object of the input not written (or in doubt): the first of the
        #: failed chunk, unless part of it is written.
        self.first_unwritten = first_unwritten
        #: The object the error is about (the one whose key or unique value is taken,
        #: whose value is invalid, ...), when the error names one; else ``None``.
        self.entity = entity
        #: The chunk may have been written, in whole or in part (see
        #: :class:`OperationalError`, and ``in_doubt``).
        self.outcome_unknown = outcome_unknown
        #: The objects of the failed chunk known not to be written, in input order.
        self.unwritten: list[Any] = [] if unwritten is None else unwritten
        #: The objects of the failed chunk whose transaction's outcome is unknown.
        self.in_doubt: list[Any] = [] if in_doubt is None else in_doubt
        #: Where the input not tried yet starts: the index after the failed chunk.
        self.next_index = written if next_index is None else next_index
        #: The transactions of the failed chunk and how each ended (empty when the
        #: chunk failed before any was sent, e.g. an invalid value).
        self.transactions: list[BulkTransaction] = [] if transactions is None else transactions


__all__ = [
    "BulkAddError",
    "BulkTransaction",
    "ClusterNodeError",
    "ConflictError",
    "DecodeError",
    "DetachedInstanceError",
    "IntegrityError",
    "InvalidRequestError",
    "MappingError",
    "MultipleResultsFound",
    "NotFound",
    "OperationalError",
    "QueryError",
    "RediscaError",
    "StaleDataError",
    "UncommittedChangesWarning",
    "UniqueViolation",
    "ValidationError",
]

"""The executor: the commit and load protocols, and the one driver that sends
commands to Redis with blocking I/O.

The protocols are generators (sans-I/O, :mod:`redisca.session.io`): a commit's
reads, checks, ``MULTI``/``EXEC``, retries, in-doubt bookkeeping and on a cluster
the following of refusals yield their round trips, waits and slot-map reads, which
:func:`drive` performs here and :mod:`redisca.asyncio`'s driver performs with
``await``: one protocol, two drivers. A round trip is one request, so a commit's
thousands of commands are built and checked inside one step of the generator.

The sync driver talks to a pooled connection directly, so that ``WATCH`` and the reads
that follow it go out in one write (redis-py's pipeline would send each read
after ``WATCH`` on its own), and it reads replies undecoded, so clients made
with ``decode_responses=True`` or ``False``, RESP2 or RESP3, look the same.
It packs the commands itself (:mod:`redisca.session.resp`): redis-py's packer
cost a third of a large commit's client time.

A commit is at most two round trips: ``WATCH`` + reads, then
``MULTI``/``EXEC``. With nothing to watch it is the last one alone.

On a cluster client (:mod:`redisca.session.routing`), a commit's keys share one
slot and go to that slot's master; a load or query is one round trip per master.
A refusal before ``EXEC`` ran (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``,
a refused ``WATCH``) drops the connection (and its ``WATCH``) and tries again; an
``EXEC`` whose reply was lost is never sent again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import inspect
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple, TypeVar

import redis
from redis.exceptions import ResponseError

from ..conf import Client
from ..errors import (
    ConflictError,
    IntegrityError,
    InvalidRequestError,
    OperationalError,
    RediscaError,
)
from ..mapping.keys import decode_id
from . import expiry, routing
from . import sweep as sweeping
from .emit import GUARDED_WRITE, REMOVE_FIELDS, emit
from .io import OnConnection, Parallel, Refresh, Run, RunAll, Send, Sleep, Steps
from .plan import SWEEP_PER_COMMIT, Command, CommitPlan, Observed, Reads, Slot, collect_reads
from .rebuild import Sightings, fence, markers_of, parse_marker
from .resp import pack
from .routing import Redirected

T = TypeVar("T")

#: How often a commit whose watched keys changed is re-read and retried.
DEFAULT_RETRIES = 5

_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


@functools.cache
def wants_command_name(pool_type: type[Any]) -> bool:
    """Whether a pool class's ``get_connection`` requires a command name (the asyncio
    driver asks too). redis-py before 5.3 requires one; later versions deprecate it."""
    # Asked once per pool class: inspect.signature is too slow for every checkout.
    param = inspect.signature(pool_type.get_connection).parameters.get("command_name")
    return param is not None and param.default is inspect.Parameter.empty


class connection:  # lowercase: used like a function, `with connection(client) as conn`
    """A connection of the client's pool, returned clean (no WATCH left) afterwards.

    redisca's own refusals (a taken unique value, a stale entity) leave the
    connection clean (the commit sends ``UNWATCH``); anything else drops it, and
    whatever state the server kept for it goes with it. A class, not a generator:
    every load and query checks a connection out, and this costs a third as much.
    """

    __slots__ = ("conn", "pool")

    def __init__(self, client: Any, pool: Any = None) -> None:
        """``client``: a plain client, whose pool is used, or with ``pool`` (a cluster
        master's, from routing) any client."""
        self.pool = None
        conn = getattr(client, "connection", None) if pool is None else None
        if conn is None:  # not a single_connection_client's own
            if pool is None:
                pool = client.connection_pool
            try:  # redis-py connects (or reconnects a stale connection) at checkout
                conn = (
                    pool.get_connection("MULTI")
                    if wants_command_name(pool.__class__)
                    else pool.get_connection()
                )
            except _CONNECTION_ERRORS as exc:
                raise OperationalError(f"Redis connection failed: {exc}", exc) from exc
            self.pool = pool
        self.conn: Any = conn

    def __enter__(self) -> Any:
        return self.conn

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is not None and (
                not isinstance(exc, RediscaError) or isinstance(exc, OperationalError)
            ):
                self.conn.disconnect()
        finally:
            if self.pool is not None:
                self.pool.release(self.conn)


def roundtrip(
    conn: Any, commands: Sequence[Command], *, sealed: bool = False, got: list[Any] | None = None
) -> list[Any]:
    """Send commands in one write, read every reply; error replies come back as values.

    ``sealed``: the commands end with ``EXEC``. A write that failed never
    delivered it whole, so Redis ran nothing of it; a failure while reading
    leaves the transaction's outcome unknown (``OperationalError.outcome_unknown``).
    ``got``: a list that receives the replies as they arrive, kept if a later one is lost.
    """
    _write(conn, commands)
    return _read_replies(conn, len(commands), sealed, got)


def _write(conn: Any, commands: Sequence[Command]) -> None:
    """The first half of :func:`roundtrip`: the commands in one write."""
    try:
        conn.send_packed_command(pack(commands))
    except _CONNECTION_ERRORS as exc:
        conn.disconnect()
        raise lost(exc, "") from exc


def _read_replies(
    conn: Any, count: int, sealed: bool = False, got: list[Any] | None = None
) -> list[Any]:
    """The second half of :func:`roundtrip`: ``count`` replies, errors as values."""
    replies: list[Any] = [] if got is None else got
    read = _reader(conn)
    try:
        for _ in range(count):
            try:
                replies.append(read())
            except ResponseError as exc:
                replies.append(exc)
    except _CONNECTION_ERRORS as exc:
        conn.disconnect()
        raise lost(exc, AFTER_EXEC if sealed else "") from exc
    return replies


try:  # redis-py's sentinel for "the reply is not complete yet" (5.0 to 8.x)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _INCOMPLETE
except ImportError:  # pragma: no cover - a redis-py without it reads the usual way
    _INCOMPLETE = None

#: The read redisca bypasses only when the connection's class keeps it as is: a
#: subclass that overrides it (instrumentation, a test's fault) is always called.
_PLAIN_READ = getattr(redis.connection, "AbstractConnection", redis.Connection).read_response


def _reader(conn: Any) -> Any:
    """A function returning the connection's next reply, undecoded.

    ``Connection.read_response`` costs about 1 µs per reply on top of parsing (its
    error translation, health-check bookkeeping and RESP3 push dispatch), as much as
    a short command costs the server: a 10,000-entity commit reads 10,000 to 30,000
    replies. With redis-py's hiredis parser, redisca asks hiredis for each reply
    itself, as ``read_response`` does inside, reads the socket through the parser
    when a reply is incomplete (which raises redis-py's own errors on a timeout or a
    closed socket), and hands RESP3 push messages to the parser's handler as
    ``read_response`` does. Otherwise (redis-py's own parser, a RESP3 connection
    whose parser cannot tell pushes from replies, a class overriding
    ``read_response``) it calls ``read_response``.
    """
    parser: Any = getattr(conn, "_parser", None)
    hiredis = getattr(parser, "_reader", None)
    slow = functools.partial(conn.read_response, disable_decoding=True)
    if (
        hiredis is None
        or _INCOMPLETE is None
        or type(conn).read_response is not _PLAIN_READ
        or getattr(parser, "_next_response", _INCOMPLETE) is not _INCOMPLETE
    ):
        return slow
    push: Any = None
    if getattr(conn, "protocol", 2) in (3, "3"):
        push = getattr(parser, "_hiredis_PushNotificationType", None)
        if push is None or not hasattr(parser, "handle_push_response"):
            return slow
    gets, refill = hiredis.gets, parser.read_from_socket

    def read() -> Any:
        while True:
            reply = gets(False)
            while reply is _INCOMPLETE:
                refill()
                reply = gets(False)
            if push is None or not isinstance(reply, push):
                break
            parser.handle_push_response(reply)  # not a reply: the next one is
        if isinstance(reply, redis.ConnectionError):  # e.g. LOADING: as redis-py raises it
            raise reply
        return reply  # an error reply is a ResponseError value, as roundtrip keeps it

    return read


#: :func:`lost`'s ``when`` for a failure after a sealed write went out.
AFTER_EXEC = " after EXEC was sent"


def lost(exc: BaseException, when: str) -> OperationalError:
    """The error for a failed write or read (the driver dropped the connection);
    ``when``: ``""`` before anything of a transaction ran, else :data:`AFTER_EXEC`."""
    if not when:
        return OperationalError(f"Redis connection failed: {exc}", exc)
    return OperationalError(
        f"Redis connection failed{when}: the outcome is unknown, Redis may or may not "
        f"have applied the transaction ({exc})",
        exc,
        outcome_unknown=True,
    )


def drive(steps: Steps[T], conn: Any = None) -> T:
    """Run a protocol (:mod:`redisca.session.io`) with blocking I/O: its
    :class:`~redisca.session.io.Send` on ``conn``, its
    :class:`~redisca.session.io.OnConnection` on a pooled connection. A failure is
    thrown into the protocol where it yielded, as if the call it stands for had raised
    there."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        reply = error = None
        try:
            kind = request.__class__
            if kind is Send:
                reply = roundtrip(conn, request.commands, sealed=request.sealed, got=request.got)
            elif kind is Run:
                with connection(request.client, request.pool) as other:
                    reply = roundtrip(other, request.commands)
            elif kind is RunAll:
                reply = _run_all(request.runs)
            elif kind is OnConnection:
                with connection(request.client, request.pool) as other:
                    reply = drive(request.work(_server(other)), other)
            elif kind is Parallel:
                reply = _parallel(request.steps)
            elif kind is Sleep:
                time.sleep(request.seconds)
            elif request.quiet:
                routing.forget(request.client)
            else:
                routing.refresh(request.client)
        except BaseException as exc:  # thrown into the protocol, which re-raises it
            error = exc


#: Most protocols of one :class:`~redisca.session.io.Parallel` run at once (threads):
#: enough to keep the masters of a usual cluster busy, few threads for a small client.
PARALLEL = 8


def _outcome(steps: Steps[Any]) -> tuple[bool, Any]:
    try:
        return True, drive(steps)
    except BaseException as exc:  # reported to the protocol that asked, with the rest
        return False, exc


def _parallel(steps: Sequence[Steps[Any]]) -> list[tuple[bool, Any]]:
    """:class:`~redisca.session.io.Parallel` with threads: the first protocol runs on
    this thread, the others on a pool of the process, kept (starting a thread costs
    milliseconds on a busy machine, and a bulk load asks for a few per chunk). A
    protocol run on the pool that asks for a ``Parallel`` itself runs it on its own
    thread, one after the other: it would otherwise wait for workers busy with its
    parent's siblings."""
    if len(steps) < 2 or getattr(_worker, "busy", False):
        return [_outcome(one) for one in steps]
    pool = _pool()
    futures = [pool.submit(_on_worker, one) for one in steps[1:]]
    first = _outcome(steps[0])
    return [first, *(future.result() for future in futures)]


_worker = threading.local()
_pools: list[concurrent.futures.ThreadPoolExecutor] = []
_pool_lock = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    if not _pools:
        with _pool_lock:
            if not _pools:
                _pools.append(
                    concurrent.futures.ThreadPoolExecutor(
                        max_workers=PARALLEL, thread_name_prefix="redisca-shards"
                    )
                )
    return _pools[0]


def _on_worker(steps: Steps[Any]) -> tuple[bool, Any]:
    _worker.busy = True
    return _outcome(steps)


def _run_all(runs: list[Run]) -> list[list[Any]]:
    """:class:`~redisca.session.io.RunAll`: every run written to its server, then every
    reply read; a failure drops all the batch's connections (the exit of each
    ``connection`` with the error)."""
    with contextlib.ExitStack() as stack:
        conns = []
        for one in runs:
            conn = stack.enter_context(connection(one.client, one.pool))
            _write(conn, one.commands)
            conns.append(conn)
        return [_read_replies(c, len(one.commands)) for c, one in zip(conns, runs, strict=True)]


def run(client: Client, commands: Sequence[Command]) -> list[Any]:
    """One round trip of independent commands (loads and queries); on a cluster, one
    per master, the replies in the order of ``commands``."""
    if not commands:
        return []
    if routing.is_cluster(client):
        return drive(routed_run(client, commands))
    with connection(client) as conn:  # run_steps, without its steps: every get comes here
        return roundtrip(conn, commands)


def run_steps(client: Any, commands: Sequence[Command]) -> Steps[list[Any]]:
    """:func:`run` as a protocol (what the async driver runs)."""
    if not commands:
        return []
    if routing.is_cluster(client):
        return (yield from routed_run(client, commands))
    return (yield Run(client, None, commands))  # type: ignore[no-any-return]


def routed_run(client: Any, commands: Sequence[Command]) -> Steps[list[Any]]:
    """:func:`run` on a cluster: commands grouped by master, refusals followed (reads
    are idempotent: a refused one is simply sent again, after ``ASKING`` for ``ASK``)."""
    replies: list[Any] = [None] * len(commands)
    pending = list(range(len(commands)))
    asking: dict[int, Any] = {}  # command index -> the pool an ASK sent it to
    found: routing.Refusal | None = None
    for hop in range(routing.MAX_HOPS):
        groups = list(_by_pool(client, commands, pending, asking).values())
        sents = [
            [c for i in indexes for c in _asked(commands[i], i in asking)] for _, indexes in groups
        ]
        runs = [Run(client, pool, sent) for (pool, _), sent in zip(groups, sents, strict=True)]
        try:  # every master at once: one round trip per master, overlapping
            gots = [(yield runs[0])] if len(runs) == 1 else (yield RunAll(runs))
        except OperationalError:  # a master gone: the next call asks the new map
            yield Refresh(client, quiet=True)
            raise
        for (_, indexes), sent, got in zip(groups, sents, gots, strict=True):
            if asking:
                got = [r for r, c in zip(got, sent, strict=True) if c is not _ASKING]
            for i, reply in zip(indexes, got, strict=True):
                replies[i] = reply
        pending, found = _refused(client, commands, replies, pending, asking)
        if found is None:
            return replies
        if found.kind != "ASK":
            yield from routing.follow(client, found, hop)
    assert found is not None
    raise routing.gave_up(found, "a read")


_ASKING: Command = (b"ASKING",)


def _asked(command: Command, ask: bool) -> tuple[Command, ...]:
    return (_ASKING, command) if ask else (command,)


def _by_pool(
    client: Any, commands: Sequence[Command], indexes: list[int], asking: dict[int, Any]
) -> dict[int, tuple[Any, list[int]]]:
    """The commands at ``indexes`` grouped by the pool of the master serving them."""
    pools: dict[int, Any] = {}  # slot -> pool: the slot map is asked once per slot
    out: dict[int, tuple[Any, list[int]]] = {}
    for i in indexes:
        pool = asking.get(i)
        if pool is None:
            key = routing.command_key(commands[i])
            if key is None:
                raise InvalidRequestError(
                    f"{commands[i][0]!r} names no key: on a cluster it cannot be routed"
                )
            slot = routing.slot_of(key)
            pool = pools.get(slot)
            if pool is None:
                pool = pools[slot] = routing.pool(client, slot)
        out.setdefault(id(pool), (pool, []))[1].append(i)
    return out


def _refused(
    client: Any,
    commands: Sequence[Command],
    replies: list[Any],
    indexes: list[int],
    asking: dict[int, Any],
) -> tuple[list[int], routing.Refusal | None]:
    """The commands to send again, and the refusal that decides how to wait."""
    again: list[int] = []
    worst: routing.Refusal | None = None
    for i in indexes:
        reply = replies[i]
        found = routing.refusal(reply) if isinstance(reply, ResponseError) else None
        asking.pop(i, None)
        if found is None:
            continue
        if found.kind not in routing.RETRYABLE:
            raise OperationalError(
                f"the cluster refused {commands[i][0]!r} ({found.kind}): {reply}", reply
            )
        if found.kind == "ASK":
            target = routing.ask_pool(client, found)
            if target is not None:
                asking[i] = target
            else:
                found = found._replace(kind="MOVED")
        again.append(i)
        if worst is None or worst.kind == "ASK":
            worst = found
    return again, worst


def _digest(script: bytes) -> bytes:
    return hashlib.sha1(script).hexdigest().encode()


GUARDED_WRITE_SHA = _digest(GUARDED_WRITE)
REMOVE_FIELDS_SHA = _digest(REMOVE_FIELDS)


def _by_digest(commands: Sequence[Command]) -> list[Command]:
    """The commands with redisca's scripts sent by digest after their first EVAL.

    A commit of many plain updates runs the same script once per entity; sending
    its body each time costs the server a SHA1 and a parse per command. The first
    EVAL caches the script, and the EVALSHAs that follow run after it inside the
    same MULTI/EXEC, so no script flush can come between (and an ACL needs only
    ``+eval +evalsha``, no ``SCRIPT LOAD``).
    """
    out: list[Command] = []
    seen: set[bytes] = set()
    for command in commands:
        if command[0] == b"EVAL":
            script = command[1]
            if script in seen:
                if script is GUARDED_WRITE:
                    command = (b"EVALSHA", GUARDED_WRITE_SHA, *command[2:])
                elif script is REMOVE_FIELDS:
                    command = (b"EVALSHA", REMOVE_FIELDS_SHA, *command[2:])
            else:
                seen.add(script)
        out.append(command)
    return out


class Wait(NamedTuple):
    """``WAIT`` after a commit's ``EXEC`` (``Session(wait_replicas=...)``): how many
    replicas must acknowledge the commit, and how long the master waits for them."""

    replicas: int
    timeout_ms: int

    def command(self) -> Command:
        return (b"WAIT", self.replicas, self.timeout_ms)


def transaction(
    conn: Any,
    commands: Sequence[Command],
    before: Sequence[Command] = (),
    got: list[Any] | None = None,
    wait: Wait | None = None,
) -> list[Any] | None:
    """:func:`transaction_steps` on ``conn`` (the maintenance tasks' transactions)."""
    return drive(transaction_steps(commands, before, got, wait), conn)


def transaction_steps(
    commands: Sequence[Command],
    before: Sequence[Command] = (),
    got: list[Any] | None = None,
    wait: Wait | None = None,
) -> Steps[list[Any] | None]:
    """MULTI … EXEC in one round trip (after ``before``, in the same write); ``None``
    when a watched key changed. ``got`` receives the replies as they arrive.

    A cluster's refusal of ``EXEC`` or of a queued command (nothing ran) raises
    :class:`~redisca.session.routing.Redirected`; so does a refused ``WATCH`` in
    ``before``, and if ``EXEC`` ran unwatched after it, with ``outcome_unknown``.
    ``wait``: ``WAIT`` goes out in the same write, after ``EXEC``; an ``EXEC`` that ran
    but was not acknowledged by enough replicas raises with ``outcome_unknown``."""
    sent = _by_digest(commands)
    after = [wait.command()] if wait is not None else []
    replies = yield Send([*before, (b"MULTI",), *sent, (b"EXEC",), *after], True, got)
    head, replies = replies[: len(before)], replies[len(before) :]
    acked = replies.pop() if after else None
    result = replies[-1]
    if isinstance(result, ResponseError):
        queued = next((r for r in replies[1:-1] if isinstance(r, ResponseError)), result)
        routing.check(result, "EXEC")
        routing.check(queued, "a command inside MULTI")
        _check_watch(before, head, applied=False)
        raise OperationalError(f"Redis refused the transaction: {queued}", queued)
    _check_watch(before, head, applied=result is not None)
    if result is None:
        return None
    if wait is not None:
        _check_replicated(acked, wait)
    return list(result)  # a command that failed inside EXEC is a ResponseError here


def _check_replicated(acked: Any, wait: Wait) -> None:
    """``WAIT``'s reply: the number of replicas that acknowledged the commit.

    Fewer than asked: the master applied the commit, and a failover before its
    replicas catch up loses it (replication is asynchronous). The caller cannot
    tell which will happen, so it is an unknown outcome, which the session's next
    commit verifies as it does after a lost ``EXEC`` reply."""
    if isinstance(acked, int) and acked >= wait.replicas:
        return
    if isinstance(acked, int):
        said = (
            f"only {acked} of the {wait.replicas} replica(s) asked for acknowledged it "
            f"within {wait.timeout_ms} ms"
        )
    else:
        said = f"WAIT for {wait.replicas} replica(s) failed ({acked})"
    raise OperationalError(
        f"Redis applied the transaction on its master, but {said}: a failover before "
        "the replicas catch up loses it, so the outcome is unknown (committing again "
        "verifies it)",
        acked if isinstance(acked, BaseException) else None,
        outcome_unknown=True,
    )


def atomic(client: Any, commands: Sequence[Command]) -> list[Any]:
    """``commands`` in one ``MULTI``/``EXEC`` without ``WATCH`` (``Hash.save``), their
    replies (a failed command's error among them). On a cluster they share one slot and
    go to its master; a refusal of the transaction (nothing ran) is followed and it is
    sent again."""
    if not routing.is_cluster(client):
        with connection(client) as conn:
            return drive(transaction_steps(commands), conn) or []
    slot = routing.in_slot(routing.commit_keys(commands), None, "the transaction")
    steps = on_slot(client, slot, "the transaction", lambda server: transaction_steps(commands))
    return drive(steps) or []


def on_slot(client: Any, slot: int, what: str, work: Callable[[Hashable], Steps[T]]) -> Steps[T]:
    """``work`` on a connection to the master of ``slot``; a refusal before ``EXEC``
    ran is followed and ``work`` done again on a new connection (the refused one is
    dropped, its ``WATCH`` with it). A lost connection is not retried here (its
    ``OperationalError`` says whether ``EXEC`` went out); the slot map is read again,
    so the next call finds a new master."""
    found: routing.Refusal | None = None
    for hop in range(routing.MAX_HOPS):
        try:
            return (yield OnConnection(client, routing.pool(client, slot), work))  # type: ignore[no-any-return]
        except Redirected as refused:
            found = refused.found
            if found.kind not in routing.RETRYABLE:
                raise OperationalError(
                    f"the cluster refused {what} in slot {slot} ({found.kind}): {found.error}",
                    found.error,
                ) from refused
            yield from routing.follow(client, found, hop)
        except OperationalError as exc:
            if exc.orig is not None and isinstance(exc.orig, _CONNECTION_ERRORS):
                yield Refresh(client, quiet=True)  # a master gone: the next call asks the new map
            raise
    assert found is not None
    raise routing.gave_up(found, f"{what} in slot {slot}")


def check_watch(reply: Any) -> None:
    """A ``WATCH`` sent in its own round trip must have been accepted (the unique
    protocol of sharded models, :mod:`redisca.session.claims`)."""
    if isinstance(reply, ResponseError):
        _refused_watch(reply, applied=False)


def _check_watch(before: Sequence[Command], replies: list[Any], applied: bool) -> None:
    """A ``WATCH`` sent in the transaction's own write must have been accepted."""
    for command, reply in zip(before, replies, strict=True):
        if command[0] == b"WATCH" and isinstance(reply, ResponseError):
            _refused_watch(reply, applied)


def _refused_watch(reply: BaseException, applied: bool) -> None:
    found = routing.refusal(reply)
    if applied:  # EXEC ran unwatched: it was applied, but not as the commit meant
        where = "WATCH (EXEC then ran unwatched and was applied)"
        error = routing.cluster_node_error(found, where) if found else None
        raise OperationalError(
            str(error) if error else f"Redis refused {where}: {reply}",
            reply,
            outcome_unknown=True,
        )
    if found is not None:
        raise Redirected(found, "WATCH")
    raise OperationalError(f"Redis refused WATCH: {reply}", reply)


def _watch_and_read(reads: Reads, observed: Observed) -> Steps[None]:
    watched = reads.keys()
    commands: list[Command] = [(b"WATCH", *watched)] if watched else []
    commands += [(b"EXISTS", key) for key in reads.exists]
    commands += [(b"HMGET", key, *fields) for key, fields in reads.fields.items()]
    stripes = _by_stripe(reads.owners)
    commands += [(b"HMGET", stripe, *[v for _, v in slots]) for stripe, slots in stripes.items()]
    commands += [(b"LRANGE", key, 0, -1) for key in reads.markers]
    commands += [(b"GET", key) for key in reads.counters]
    commands += [
        (b"SMEMBERS", key) if key not in reads.live else expiry.live_members(key, reads.live[key])
        for key in reads.members
    ]
    commands += [expiry.read_command(key, list(ids)) for key, ids in reads.expiry.items()]
    commands += [(b"SMEMBERS", key) for key in reads.collections]
    commands += [sweeping.read_command(m, SWEEP_PER_COMMIT, by_digest=False) for m in reads.sweeps]
    got = yield Send(commands)
    if watched and isinstance(got[0], ResponseError):
        _refused_watch(got[0], applied=False)  # never MULTI after a refused WATCH
    replies = iter(got[1 if watched else 0 :])
    for key in reads.exists:
        reply = next(replies)
        observed.exists[key] = bool(reply if reply.__class__ is int else _checked(reply, key))
    for key, fields in reads.fields.items():
        values = _checked(next(replies), key)
        observed.fields[key] = dict(zip(fields, values, strict=True))
    owners = observed.owners
    for stripe, slots in stripes.items():
        found = _checked(next(replies), stripe)
        for slot, owner in zip(slots, found, strict=True):
            owners[slot] = None if owner is None else decode_id(owner, stripe)
    for key in reads.markers:
        run = parse_marker(_checked(next(replies), key))
        if run is not None:
            observed.rebuilds[key] = run
    for key in reads.counters:
        observed.guards[key] = _counter(next(replies))
    for key in reads.members:
        observed.members[key] = {m.decode() for m in _checked(next(replies), key)}
    for key, ids in reads.expiry.items():
        found = expiry.instants(next(replies), key, len(ids))
        observed.expired.update(e for e, at in zip(ids.values(), found, strict=True) if at == 0)
    for key in reads.collections:
        observed.collections[key] = frozenset(_checked(next(replies), key))
    for mapper in reads.sweeps:
        batch = sweeping.batch_or_none(mapper, next(replies))
        if batch is not None and batch.expired:
            observed.sweeps[mapper] = batch


def _expired_owners(plan: CommitPlan, reads: Reads, observed: Observed) -> Steps[None]:
    """Unique values claimed from another owner of an expiring model: the value is free
    if that owner expired. Only then, one more round trip: ``WATCH`` the owners' guard
    stripes (any change of their expiry moves them, failing the ``EXEC``), then read
    their instants; an expired owner's values are claimed as free."""
    held = [
        (field, raw, slot, owner)
        for (field, raw), slot in reads.slots.items()
        for owner in (observed.owners.get(slot),)
        if owner is not None and field.mapper.expiring and slot in reads.claims
    ]
    if not held:
        return
    claimants = {(f, raw): c.id for c in plan.changes for f, raw in c.values.items() if f.unique}
    owners: dict[tuple[bytes, str], list[Slot]] = {}
    guards: dict[bytes, None] = {}
    for field, raw, slot, owner in held:
        if owner != claimants.get((field, raw)):  # held by another entity
            layout = field.mapper.layout
            owners.setdefault((layout.expiry_of(owner), owner), []).append(slot)
            guards[layout.guard(owner.encode())] = None
    if not owners:
        return
    by_key: dict[bytes, list[str]] = {}
    for key, ident in owners:
        by_key.setdefault(key, []).append(ident)
    commands: list[Command] = [(b"WATCH", *guards)]
    commands += [expiry.read_command(key, ids) for key, ids in by_key.items()]
    # The stripes again: an owner that expired may have been created again since the
    # first read, and released the value then (its stripe is watched since, so the
    # EXEC fails if it changed; but the verdict must not rest on the first read).
    stripes = _by_stripe([slot for slots in owners.values() for slot in slots])
    commands += [(b"HMGET", stripe, *[v for _, v in slots]) for stripe, slots in stripes.items()]
    got = yield Send(commands)
    _check_watch(commands[:1], got[:1], applied=False)
    replies = iter(got[1:])
    expired: set[Slot] = set()
    for key, ids in by_key.items():
        for ident, at in zip(ids, expiry.instants(next(replies), key, len(ids)), strict=True):
            if at == 0:
                expired.update(owners[(key, ident)])
    for stripe, slots in stripes.items():
        for slot, now in zip(slots, _checked(next(replies), stripe), strict=True):
            fresh = None if now is None else decode_id(now, stripe)
            if fresh != observed.owners.get(slot) or slot in expired:
                # Changed since the first read, which WATCHed it: this attempt's EXEC
                # fails whatever it sends, and the retry reads again. Or still held
                # by an owner that expired: free.
                observed.owners[slot] = None


def _by_stripe(owners: list[Slot]) -> dict[bytes, list[Slot]]:
    """Unique values whose owner to read, by stripe: one ``HMGET`` per stripe (at most
    128 per unique field) instead of an ``HGET`` per value, which a 10,000-user delete
    or insert would send 10,000 of."""
    stripes: dict[bytes, list[Slot]] = {}
    for slot in owners:
        slots = stripes.get(slot[0])
        if slots is None:
            stripes[slot[0]] = [slot]
        else:
            slots.append(slot)
    return stripes


def _counter(reply: Any) -> bytes | None:
    """A guard counter's value (anything but a string reads as unknown: ``b"?"``)."""
    if reply is None or isinstance(reply, bytes):
        return reply
    routing.check(reply, "GET")
    return b"?"


def _checked(reply: Any, key: bytes) -> Any:
    if isinstance(reply, ResponseError):
        routing.check(reply, key.decode(errors="replace"))
        raise IntegrityError(
            f"{key.decode(errors='replace')} does not hold what redisca wrote: {reply}"
        )
    return reply


class Executed(NamedTuple):
    """What a commit sent inside MULTI/EXEC, and what each command answered."""

    commands: list[Command]
    replies: list[Any]
    #: ``Observed.nulled`` of the attempt that was applied.
    nulled: tuple[tuple[Any, str, bytes], ...] = ()


def _attempt(
    plan: CommitPlan,
    reads: Reads,
    fenced: list[bytes],
    seen: dict[bytes, Any],
    wait: Wait | None,
    server: Hashable,
) -> Steps[Executed | None]:
    observed = Observed(slots=reads.slots)
    watched = bool(reads.keys())
    try:
        if reads:
            yield from _watch_and_read(reads, observed)
            seen.update(observed.guards)
            if reads.takeover:
                yield from _expired_owners(plan, reads, observed)
        commands = emit(plan, observed)
        if observed.sweeps:
            commands = sweeping.with_removals(commands, len(plan.commands), plan, observed)
    except OperationalError:
        raise  # the connection is gone, and its WATCH with it
    except RediscaError:
        if watched:
            yield Send([(b"UNWATCH",)])
        raise
    if reads.markers:
        for key in reads.markers:
            _sightings.record(server, key, key in observed.rebuilds)
    before = fence(fenced)
    if not reads and reads.counters:  # nothing read: the counters go with the fence
        before += [(b"GET", key) for key in reads.counters]
    got: list[Any] = []
    try:
        replies = yield from transaction_steps(commands, before, got, wait)
    finally:
        if not reads:  # what arrived of them, even if the EXEC reply did not
            counted = got[len(before) - len(reads.counters) : len(before)]
            seen.update((k, _counter(v)) for k, v in zip(reads.counters, counted, strict=False))
    return None if replies is None else Executed(commands, replies, tuple(observed.nulled))


#: Reindex markers this process saw lately (see :mod:`redisca.session.rebuild`).
_sightings = Sightings()


def _server(conn: Any) -> Hashable:
    """What a sighting of a marker is remembered by: the server and database."""
    return tuple(getattr(conn, name, None) for name in ("host", "port", "path", "db"))


def execute_commit(
    client: Client,
    plan: CommitPlan,
    retries: int = DEFAULT_RETRIES,
    seen: dict[bytes, Any] | None = None,
    wait: Wait | None = None,
) -> Executed:
    """:func:`commit_steps` with blocking I/O."""
    return drive(commit_steps(client, plan, retries, seen, wait))


def commit_steps(
    client: Client,
    plan: CommitPlan,
    retries: int = DEFAULT_RETRIES,
    seen: dict[bytes, Any] | None = None,
    wait: Wait | None = None,
) -> Steps[Executed]:
    """Run one plan on one server: WATCH, read, check, MULTI/EXEC, retry on conflict.

    ``seen`` receives the guard counters of inserted entities as the last attempt read
    them, for a retry after an unknown outcome (see ``EntityChange.guard_seen``).
    ``wait``: the replicas that must acknowledge the ``EXEC`` (see :class:`Wait`).

    Commits that change index entries learn whether a reindex runs: see
    :mod:`redisca.session.rebuild`. One that has nothing else to read is fenced
    instead; a tripped fence is not a conflict and spends no retry.
    """
    reads = collect_reads(plan)
    markers = markers_of(plan)
    seen = {} if seen is None else seen
    if not routing.is_cluster(client):
        return (  # type: ignore[no-any-return]
            yield OnConnection(
                client,
                None,
                lambda server: _commit_on(plan, reads, markers, retries, seen, None, wait, server),
            )
        )
    slot = routing.plan_slot(plan)  # checked before anything is sent
    return (
        yield from on_slot(
            client,
            slot,
            "the commit",
            lambda server: _commit_on(plan, reads, markers, retries, seen, slot, wait, server),
        )
    )


def _commit_on(
    plan: CommitPlan,
    reads: Reads,
    markers: list[bytes],
    retries: int,
    seen: dict[bytes, Any],
    slot: int | None,
    wait: Wait | None,
    server: Hashable,
) -> Steps[Executed]:
    """The commit on one connection: read, emit, MULTI/EXEC, retried on conflict.

    On a cluster (``slot`` given) the reindex fence is never used: its ``WATCH``
    would go out in the write of ``MULTI``/``EXEC``, which would then run unwatched
    if the ``WATCH`` were refused; the markers are read with the other reads. A
    refusal makes :func:`on_slot` run it again from its reads on a new connection."""
    fenced: list[bytes] = []
    if markers and not reads and slot is None and not _sightings.any(server, markers):
        fenced = markers
    else:
        reads.markers = markers
    attempt = 0
    while attempt <= retries:
        executed = yield from _attempt(plan, reads, fenced, seen, wait, server)
        if executed is not None:
            replies = executed.replies
            _check_own_replies(executed.commands, replies, len(replies) - len(plan.commands))
            return executed
        if fenced:
            reads.markers, fenced = fenced, []
            continue
        attempt += 1
    raise ConflictError(f"watched keys kept changing; gave up after {retries + 1} attempts")


def _check_own_replies(commands: list[Command], replies: list[Any], own: int) -> None:
    """redisca's own writes cannot fail on data it wrote; report it loudly if they did.

    Only data another program wrote into redisca's keys (an index key of the wrong
    type, say) makes one fail; MULTI/EXEC has no rollback, so the rest is applied.
    """
    own_replies = zip(commands[:own], replies[:own], strict=True)
    failed = [
        (c, r)
        for c, r in own_replies
        if isinstance(r, ResponseError) and not sweeping.is_removal(c)  # (sweeps are extra)
    ]
    if failed:
        command, error = failed[0]
        key = command[3] if command[0] == b"EVAL" else command[1]
        name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        raise OperationalError(
            f"{len(failed)} write(s) of the commit failed in Redis and the rest was applied: "
            f"{command[0].decode()} {name[:200]} answered {error} (a key holding data "
            "redisca did not write; `python -m redisca check` lists such keys)",
            error,
        )


def user_reply(client: Client, command: Command, raw: Any) -> Any:
    """A reply to the user's own command, shaped as redis-py would return it to them."""
    if isinstance(raw, Exception):
        return raw
    encoder = client.get_encoder()
    value = _decoded(encoder, raw) if encoder.decode_responses else raw
    name = command[0].decode() if isinstance(command[0], bytes) else str(command[0])
    callbacks: Any = getattr(client, "response_callbacks", None)
    if callbacks is None:  # a cluster client: its nodes' clients shape replies
        callbacks = client.get_redis_connection(client.get_default_node()).response_callbacks  # type: ignore[union-attr]
    callback = callbacks.get(name.upper())
    if callback is None:
        return value
    try:
        return callback(value)
    except Exception:  # a callback that needs options we cannot know: the plain reply
        return value


def _decoded(encoder: Any, value: Any) -> Any:
    if isinstance(value, bytes):
        return encoder.decode(value)
    if isinstance(value, list):
        return [_decoded(encoder, v) for v in value]
    if isinstance(value, dict):
        return {_decoded(encoder, k): _decoded(encoder, v) for k, v in value.items()}
    if isinstance(value, set):
        return {_decoded(encoder, v) for v in value}
    return value


def hash_reply(reply: Any) -> dict[bytes, bytes]:
    """HGETALL's reply as a dict, whether it came as a RESP2 list or a RESP3 map."""
    if isinstance(reply, dict):
        return reply
    items = iter(reply)
    return dict(zip(items, items, strict=True))


__all__ = [
    "DEFAULT_RETRIES",
    "Executed",
    "Wait",
    "atomic",
    "check_watch",
    "connection",
    "execute_commit",
    "hash_reply",
    "roundtrip",
    "run",
    "transaction",
    "user_reply",
]

"""The Session: identity map, change tracking and the one atomic commit.

A session is meant for one thread and one unit of work (a request, a job,
a script). It holds its instances strongly until ``expunge``/``close``, as
redisca 1.x's registry did until ``free()``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import attrs

from ..conf import Client, default_client
from ..errors import (
    IntegrityError,
    InvalidRequestError,
    UncommittedChangesWarning,
    ValidationError,
)
from ..ids import hexid
from ..mapping import instrument
from ..mapping.instrument import IN_STEP, MISSING
from ..mapping.mapper import Mapper, mapper_of
from ..mapping.ttl import ttl_ms
from . import executor, gcpause, loading, resp, routing, unitofwork
from .collections import IdentitySet
from .identity import IdentityMap
from .io import Steps
from .plan import CLEAR, Command
from .query import Query
from .state import (
    InstanceState,
    detached_state,
    forget_detached,
    named,
    remember_detached,
    state_for,
)

T = TypeVar("T")


@attrs.define(eq=False)
class CommandResult:
    """The reply to a command queued with :meth:`Session.add_command`, once committed."""

    #: The command and its arguments, as queued.
    command: Command
    #: Its reply, shaped as redis-py returns it to the session's client (or the error).
    value: Any = None
    #: Whether a commit ran it.
    done: bool = False


class Session:
    """Identity map + unit of work over one or more Redis clients."""

    #: Whether reading an unloaded attribute loads it (``False`` under an
    #: :class:`~redisca.asyncio.AsyncSession`: it raises :class:`~redisca.MissingLoadError`).
    lazy_loads = True

    def __init__(
        self,
        bind: Client | None = None,
        *,
        binds: dict[type, Client] | None = None,
        retries: int = executor.DEFAULT_RETRIES,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        #: The default client; ``None`` until first needed, then
        #: :func:`redisca.conf.default_client`.
        self.bind = bind
        #: Clients per class (subclasses included), chosen before :attr:`bind`.
        self.binds = dict(binds or {})
        #: How often a commit whose watched keys changed is re-read and retried.
        self.retries = retries
        #: ``WAIT`` after every ``EXEC``: a commit returns once ``wait_replicas`` replicas
        #: have it, or raises ``OperationalError(outcome_unknown=True)`` after
        #: ``wait_timeout`` seconds (see the Guarantees page: replication is asynchronous).
        self.wait: executor.Wait | None = _wait(wait_replicas, wait_timeout)
        #: What every tracked state refers to the session by (one weak reference, made once).
        self._ref = weakref.ref(self)
        #: The identity map (``redisca.session.identity.IdentityMap``): the modules that
        #: load instances take it as an argument.
        self.identity_map = IdentityMap(self._ref)
        #: Queued commands: (client, command, result, slot on a cluster client).
        self._commands: list[tuple[Any, Command, CommandResult, int | None]] = []

    # -- context management -------------------------------------------------

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # Leaving because of an exception: it says why the changes were not committed.
        self._close(warn=exc_type is None)

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """Commit at the end of the block, or roll back if it raises."""
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def close(self) -> None:
        """Expunge every instance and drop queued commands; nothing is written.

        Changes no commit wrote (new, changed or deleted instances, queued commands) are
        dropped with an :class:`~redisca.UncommittedChangesWarning` naming them; after
        :meth:`rollback` there are none."""
        self._close(warn=True)

    def _close(self, *, warn: bool) -> None:
        """:meth:`close`; ``warn=False``: without the warning (an exception, or the
        caller's own warning, already says the changes are dropped)."""
        if warn:
            self._warn_uncommitted("closed")
        self.expunge_all()
        self._commands.clear()

    def __del__(self) -> None:
        # Dropped without close(): its instances leave the instance table, which
        # would otherwise keep them (and their states) alive for good; dropped changes
        # are warned about as close() does. Nothing else: a finalizer must not take
        # locks (gcpause's) or call into Redis.
        if getattr(self, "identity_map", None) is None:
            return
        if getattr(self, "_commands", None) or len(self.identity_map):
            # A finalizer must not raise (at interpreter exit, or a filter "error").
            with contextlib.suppress(Exception):
                self._warn_uncommitted("garbage collected without close()")
        if self.identity_map:
            instrument.detach_states(self.states())

    def _uncommitted(self) -> list[str]:
        """The changes a commit would write, one phrase each: ``User('a') new``,
        ``Post('p1') dirty``, ``Tag('t') deleted``, ``command 'INCR'`` (empty: none).
        Reads nothing from Redis."""
        found: list[str] = []
        for state in self.states():
            if state.deleted:
                found.append(f"{named(state)} deleted")
            elif not state.persistent:
                found.append(f"{named(state)} new")
            else:
                if state.expire:  # a pending session.expire
                    found.append(f"{named(state)} expire")
                if state.assigned is IN_STEP and not state.mapper.mutable:
                    continue  # nothing assigned since loaded or committed: clean, no diff
                try:
                    changed = bool(state.changes())
                except Exception:  # a value that cannot be encoded: a change all the same
                    changed = True
                if changed:
                    found.append(f"{named(state)} dirty")
        found += [f"command {c[1][0].decode(errors='replace')!r}" for c in self._commands]
        return found

    def _warn_uncommitted(self, how: str) -> None:
        found = self._uncommitted()
        if not found:
            return
        shown = ", ".join(found[:_NAMED])
        if len(found) > _NAMED:
            shown += f", and {len(found) - _NAMED} more"
        warnings.warn(
            f"session {how} with changes no commit wrote, now dropped; {len(found)} "
            f"pending: {shown} (commit() writes changes; rollback() drops them without "
            "this warning)",
            UncommittedChangesWarning,
            stacklevel=_caller_level(),
        )

    # -- binds ---------------------------------------------------------------

    def bind_for(self, mapper: Mapper | type) -> Client:
        """The client for a class: ``binds`` (subclasses included), else the session's bind."""
        cls = mapper.class_ if isinstance(mapper, Mapper) else mapper
        for klass in cls.__mro__:
            client = self.binds.get(klass)
            if client is not None:
                return client
        if self.bind is None:
            self.bind = default_client()
        return self.bind

    # -- tracking ------------------------------------------------------------

    def state(self, obj: object) -> InstanceState:
        """The tracking state of one of this session's instances (else ``InvalidRequestError``)."""
        state = instrument.state_of(obj)
        if state is None or state.session is not self:
            raise InvalidRequestError(f"{obj!r} is not in this session")
        return state  # type: ignore[no-any-return]

    def states(self) -> list[InstanceState]:
        """The states of every tracked instance, as a list the caller may keep."""
        return self.identity_map.states()

    def __contains__(self, obj: object) -> bool:
        state = instrument.state_of(obj)
        return state is not None and state._session is self._ref

    def __iter__(self) -> Iterator[Any]:
        return iter([s.obj for s in self.states()])

    def forget(self, state: InstanceState, *, deleted: bool = False) -> None:
        """Stop tracking an instance (it keeps its values; a persistent one is detached)."""
        self.identity_map.discard(state)
        state._session = None
        instrument.detach(state.obj)
        if state.persistent:
            remember_detached(state, deleted=deleted)

    def queued_commands(self) -> list[tuple[Any, Command, CommandResult, int | None]]:
        """``(client, command, result, slot)`` of each :meth:`add_command` not committed
        yet (``slot``: the hash slot it commits in on a cluster client, else ``None``)."""
        return list(self._commands)

    @property
    def new(self) -> IdentitySet:
        """Instances added and not committed yet."""
        return IdentitySet(s.obj for s in self.states() if not s.persistent)

    @property
    def deleted(self) -> IdentitySet:
        """Instances marked for deletion by the next commit."""
        return IdentitySet(s.obj for s in self.states() if s.deleted)

    @property
    def dirty(self) -> IdentitySet:
        """Persistent instances whose encoded values differ from what was loaded."""
        return IdentitySet(
            s.obj for s in self.states() if s.persistent and not s.deleted and s.modified()
        )

    def is_modified(self, obj: object) -> bool:
        """Whether a commit now would write something for ``obj``: new, deleted or changed."""
        state = self.state(obj)
        return not state.persistent or state.deleted or bool(state.expire) or state.modified()

    # -- adding and removing -------------------------------------------------

    def add(self, obj: object) -> None:
        """Track a new instance (it gets ``hexid()`` if its id is None) and its references."""
        self._add(obj, None)

    def _add(self, obj: object, held: dict[int, object] | None) -> None:
        state = instrument.state_of(obj)
        if state is not None:
            if state._session is self._ref:
                state.deleted = False  # adding back what was marked for deletion
                return
            if state.session is not None:
                raise InvalidRequestError(f"{obj!r} already belongs to another session")
        mapper = mapper_of(type(obj))
        detached = detached_state(obj, mapper)
        if detached is not None and not detached[1]:
            self._reattach(detached[0])
            return
        ident = mapper.identity(obj)
        generated = ident is None
        if ident is None:
            ident = hexid()
            mapper.id_attribute.set_raw(obj, ident)
        existing = self.identity_map.lookup(mapper, ident)
        if existing is not None and existing.obj is not obj:
            raise IntegrityError(
                f"{mapper.key(ident).decode()} is already in this session as another object; "
                "use session.merge() to copy values onto it"
            )
        state = InstanceState(obj, mapper, ident)
        state.generated_id = generated
        self.identity_map.track(state)
        self.cascade(state, held)

    def cascade(self, state: InstanceState, held: dict[int, object] | None = None) -> None:
        """Save cascade: add the entities an instance's references point to.

        ``held`` (from :meth:`add_all`): targets already seen held by the session, by id,
        so that thousands of instances referring to a few targets check each one once (the
        dict keeps them alive, so an id is never reused while it is in there). Should one
        leave the session meanwhile, the commit's own cascade adds it again.
        """
        for target in unitofwork.referred(state):
            if held is not None:
                if id(target) in held:
                    continue
                held[id(target)] = target
            if target not in self:
                self._add(target, held)

    def _reattach(self, state: InstanceState) -> None:
        """An expunged instance comes back persistent, with what was known of it."""
        existing = self.identity_map.lookup(state.mapper, state.id)  # type: ignore[arg-type]
        if existing is not None and existing.obj is not state.obj:
            raise IntegrityError(
                f"{state.key} is already in this session as another object; "
                "use session.merge() to copy values onto it"
            )
        forget_detached(state.obj)
        self.identity_map.track(state)

    def add_all(self, objs: Iterable[object]) -> None:
        """:meth:`add` each object."""
        held: dict[int, object] = {}
        with gcpause.paused(len(objs) if isinstance(objs, Sized) else 0):
            for obj in objs:
                self._add(obj, held)

    def bulk_add(
        self,
        objs: Iterable[object],
        *,
        chunk_size: int = 5000,
        progress: Callable[[int, int | None], object] | None = None,
    ) -> int:
        """Insert any number of new entities in chunks, each chunk one atomic commit.

        ``objs`` may be a generator: one chunk at a time is taken, validated and
        written. Written objects do not stay in the session (they leave detached);
        ``progress(done, total)`` is called after each chunk, ``total`` being
        ``len(objs)`` or ``None``. A failure raises :class:`~redisca.BulkAddError`
        naming the first object not written; the chunks before it stay written.
        Returns how many objects were written. See :ref:`bulk-add`.
        """
        from .bulk import bulk_add  # on first use: most sessions never bulk-load

        return bulk_add(self, objs, chunk_size, progress)

    def delete(self, obj: object) -> None:
        """Mark a persistent instance for deletion (a pending one is simply dropped)."""
        state = self.state(obj)
        if not state.persistent:
            self.forget(state)
            return
        state.deleted = True

    def expire(self, obj: object, ttl: float | timedelta | None) -> None:
        """Make an entity expire ``ttl`` (seconds, or a timedelta) after the next commit,
        or with ``None`` never; written by that commit (see :ref:`expiry`).

        Only models mapped with ``ttl=`` or ``expiring=True`` take it: their reads are
        the ones that consult expiry instants. On a new instance it replaces the
        model's ``ttl`` for its insert. The instant is taken by the Redis server's clock
        when the commit runs; ``redisca.inspect(obj).expires_at`` shows it afterwards.
        """
        state = self.state(obj)
        mapper = state.mapper
        if not mapper.expiring:
            raise InvalidRequestError(
                f"{mapper.class_.__name__} entities do not expire: map the class with "
                "registry.mapped(ttl=...) or registry.mapped(expiring=True) to use "
                "session.expire()"
            )
        if state.deleted:
            raise InvalidRequestError(f"{state.key} is marked for deletion in this session")
        state.expire = CLEAR if ttl is None else ttl_ms(ttl, f"session.expire({named(state)})")

    def expunge(self, obj: object) -> None:
        """Stop tracking one instance (redisca 1.x's ``free()``)."""
        self.forget(self.state(obj))

    def expunge_all(self) -> None:
        """Stop tracking every instance (redisca 1.x's ``free_all()``)."""
        # forget() for each, inlined: closing a session runs this per instance.
        states = self.states()
        if not states:
            return
        self.identity_map.clear()
        detach = instrument.detach
        with gcpause.paused(len(states)):
            for state in states:
                state._session = None
                detach(state.obj)
                if state.persistent:
                    remember_detached(state, deleted=False)

    def merge(self, obj: T) -> T:
        """Upsert: copy ``obj``'s values onto the session's instance of the same id.

        The instance is loaded first (one round trip unless in the session). When
        the key does not exist, a transient ``obj`` is added as new; a detached one,
        or one of another session, is copied and the copy added.
        """
        return executor.drive(self._merge_steps(obj))

    def _merge_steps(self, obj: T) -> Steps[T]:
        """:meth:`merge` as a protocol (:mod:`redisca.session.io`)."""
        if obj in self:
            return obj
        mapper = mapper_of(type(obj))
        ident = mapper.identity(obj)
        target = None
        if ident is not None:
            target = (yield from self._get_many_steps(type(obj), [ident]))[0]
        if target is None:
            if state_for(obj).status != "transient":
                obj = copy.copy(obj)
            self.add(obj)
            return obj
        for field in mapper.fields:
            value = field.attribute.get_raw(obj)
            if value is MISSING:
                continue
            if field.is_reference and value is not None and value not in self:
                value = yield from self._merge_steps(value)
            setattr(target, field.name, value)
        return target

    def update_or_create(self, cls: type[T], id: str | int, /, **values: Any) -> T:
        """Assign ``values`` to the entity with this id, creating it if Redis has none.

        redisca 1.x's ``User(id)``, set fields, ``save()`` in one call. The entity is
        loaded first (one round trip, none if the session holds it). When it exists,
        exactly these attributes are assigned: the others keep what is stored (no
        defaults, no ``None``s, unlike :meth:`merge`). When it does not,
        ``cls(**values, id=id)`` is added: the class's defaults apply and required
        attributes must be among ``values``. Returns the session's instance (a created
        one is in :attr:`new`); :meth:`commit` writes it, and a key created by someone
        else meanwhile makes that commit raise :class:`~redisca.IntegrityError`.
        """
        mapper = mapper_of(cls)
        ident = mapper.lookup_id(id)
        unknown = sorted(set(values) - set(mapper.by_name))
        if unknown:
            raise InvalidRequestError(f"{cls.__name__} has no mapped attributes {unknown}")
        obj = self.get(cls, ident)
        if obj is None:
            return self._create(mapper, ident, values)  # type: ignore[no-any-return]
        for name, value in values.items():
            setattr(obj, name, value)
        return obj

    def _create(self, mapper: Mapper, ident: str, values: dict[str, Any]) -> Any:
        """The entity :meth:`update_or_create` adds, built by the class's ``__init__``."""
        state = self.identity_map.lookup(mapper, ident)
        if state is not None and state.deleted:
            raise InvalidRequestError(f"{state.key} is marked for deletion in this session")
        init, late = _init_arguments(mapper, ident, values)
        if state is None:
            obj = mapper.class_(**init)
            self.add(obj)
        else:
            # A reference() to a key Redis does not hold: that object becomes the new
            # entity (objects holding it keep holding it), initialised by the class.
            obj = state.obj
            type(obj).__init__(obj, **init)
            state.persistent = state.loaded = False
            state.snapshot, state.assigned, state.version = {}, None, None
            self.cascade(state)
        for name, value in late.items():
            setattr(obj, name, value)
        return obj

    # -- loading -------------------------------------------------------------

    def reference(self, cls: type[T], id: str | int) -> T:
        """An instance for a key without loading it; its first field read loads the hash."""
        mapper = mapper_of(cls)
        return self.identity_map.stub(mapper, mapper.lookup_id(id))  # type: ignore[no-any-return]

    def get(self, cls: type[T], id: str | int) -> T | None:
        """The instance with this id, loading it in one round trip unless already loaded."""
        return self.get_many(cls, [id])[0]

    def get_many(self, cls: type[T], ids: Sequence[str | int]) -> list[T | None]:
        """Instances in the order of ``ids``; one round trip for all not yet loaded."""
        mapper = mapper_of(cls)
        idents, lookup, wanted = loading.wanted(self.identity_map, mapper, ids)
        if wanted:
            with gcpause.paused(len(wanted)):
                loading.load_ids(self.identity_map, self.bind_for(mapper), mapper, wanted)
        return loading.found(lookup, idents)

    def _get_many_steps(self, cls: type[T], ids: Sequence[str | int]) -> Steps[list[T | None]]:
        """:meth:`get_many` as a protocol (:mod:`redisca.session.io`): the async
        session's; the sync one keeps its direct path, the path of every load."""
        mapper = mapper_of(cls)
        idents, lookup, wanted = loading.wanted(self.identity_map, mapper, ids)
        if wanted:
            client = self.bind_for(mapper)
            with gcpause.paused(len(wanted)):
                raws = yield from loading.fetch_steps(client, mapper, wanted)
                loading.install(self.identity_map, mapper, wanted, raws)
        return loading.found(lookup, idents)

    def refresh(self, obj: object, *, only_missing: bool = False) -> None:
        """Reload from Redis, discarding changes (``only_missing``: just fill unset fields)."""
        executor.drive(self._refresh_steps(obj, only_missing=only_missing))

    def _refresh_steps(self, obj: object, *, only_missing: bool = False) -> Steps[None]:
        """:meth:`refresh` as a protocol (:mod:`redisca.session.io`)."""
        state = self.state(obj)
        client = self.bind_for(state.mapper)
        raw = (yield from loading.fetch_steps(client, state.mapper, [state.id]))[0]  # type: ignore[list-item]
        loading.require(bool(raw), state)
        loading.hydrate(self.identity_map, state, raw, overwrite=not only_missing)
        if not only_missing:
            state.expire = 0  # a pending session.expire is a change, discarded too

    def unload(self, obj: object) -> None:
        """Forget what was loaded of ``obj`` but keep its changes (redisca 1.x's ``unload()``).

        Attributes whose values differ from the loaded ones keep them; the others are
        unset, and reading one loads the hash again (the way :meth:`refresh` with
        ``only_missing=True`` does; that is 1.x's ``load()``). No round trip now. A
        commit writes the kept changes as before. A pending instance has nothing
        loaded and is left as it is.
        """
        state = self.state(obj)
        if not state.persistent:
            return
        changed = state.changed_names()
        for field in (*state.mapper.fields, *state.mapper.collections):
            if field.name not in changed:
                field.attribute.del_raw(state.obj)
        state.snapshot, state.version, state.loaded = {}, None, False
        state.assigned = changed if changed else IN_STEP

    def preload(self, objs: Iterable[object], *attributes: Any) -> None:
        """Load the targets of reference attributes of many instances: no N+1.

        One round trip per server for all targets, however many instances.
        """
        targets = self._unloaded_targets(objs, attributes)
        if targets:
            loading.load_states(self.identity_map, self.bind_for, targets)

    def _unloaded_targets(self, objs: Iterable[object], attributes: Any) -> list[InstanceState]:
        """What :meth:`preload` loads: the unloaded targets of ``attributes`` (reference
        attributes or their names; none: every reference) of ``objs``."""
        names = [getattr(a, "name", a) for a in attributes]
        targets: dict[int, InstanceState] = {}
        for obj in objs:
            mapper = self.state(obj).mapper
            for name in names or [f.name for f in mapper.references]:
                field = mapper.by_name.get(name)
                if field is None or not field.is_reference:
                    raise InvalidRequestError(f"{mapper.class_.__name__}.{name} is no reference")
                target = field.attribute.get_raw(obj)
                if target is MISSING or target is None:
                    continue
                state = instrument.state_of(target)
                if state is not None and state.session is self and not state.loaded:
                    targets[id(state)] = state
        return list(targets.values())

    def query(self, cls: type[T]) -> Query[T]:
        """A :class:`~redisca.Query` over the indexed fields of ``cls``."""
        return Query(self, mapper_of(cls))

    # -- committing ----------------------------------------------------------

    def add_command(self, *args: Any, bind: type | None = None) -> CommandResult:
        """Queue your own Redis command to run inside the next commit's MULTI/EXEC.

        ``bind`` picks the server by mapped class (default: the session's bind).
        The reply is in the returned object's ``value`` once the commit succeeded.
        Arguments are what redis-py's commands take (bytes, str sent as UTF-8, int,
        float); anything else raises :class:`~redisca.ValidationError` here, and so
        do commands that would break the transaction or the pooled connection
        (``EXEC``, ``WATCH``, ``SELECT``, ``AUTH``, ``CLIENT``, ``SUBSCRIBE``, ...:
        ``redisca.session.resp.REFUSED_COMMANDS``).

        On a cluster client the command joins the ``MULTI``/``EXEC`` of one slot group:
        ``bind``'s (a mapped class), or without ``bind`` the one slot of its keys. Its
        keys (as redis-py's command table names them; a script's declared keys) must
        all be in that slot, or :class:`~redisca.ValidationError` is raised here.
        """
        wire = resp.encode_command(args)  # refused here, not halfway through a commit
        client = self.bind_for(bind) if bind is not None else self.bind_for(object)
        slot = None
        if routing.is_cluster(client):
            group = None if bind is None else unitofwork.target(client, _mapped(bind))[1]
            slot = routing.user_command_slot(client, wire, group)
        result = CommandResult(tuple(args))
        self._commands.append((client, wire, result, slot))
        return result

    def commit(self) -> None:
        """Write every pending change: one MULTI/EXEC per server, all or nothing."""
        with gcpause.paused(len(self.identity_map)):
            self._commit()

    def _commit(self) -> None:
        executor.drive(unitofwork.commit_steps(self))

    def rollback(self) -> None:
        """Drop pending adds, deletes and commands; loaded instances return to what was loaded."""
        self._commands.clear()
        for state in self.states():
            if not state.persistent:
                self.forget(state)
                continue
            state.deleted = False
            state.in_doubt = False
            state.expire = 0
            self._restore(state)

    def _restore(self, state: InstanceState) -> None:
        key = state.mapper.key(state.id)  # type: ignore[arg-type]
        for field in state.mapper.fields:
            if field in state.snapshot:
                value = loading.python_value(self.identity_map, field, state.snapshot[field], key)
                field.attribute.set_raw(state.obj, value)
            else:
                field.attribute.del_raw(state.obj)
        state.assigned = IN_STEP


#: How many changes an UncommittedChangesWarning names (then "and N more").
_NAMED = 10

#: redisca's own directory: a warning points at the first frame outside it.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside redisca, for the warning issued
    by the caller of this function: the user's ``close()``, ``with`` or ``await``."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level


def _wait(replicas: int, timeout: float) -> executor.Wait | None:
    """The ``WAIT`` of ``Session(wait_replicas=, wait_timeout=)``, checked; ``None``: none."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ValidationError(f"wait_replicas must be an int >= 0, not {replicas!r}")
    if not replicas:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValidationError(f"wait_timeout must be a number of seconds > 0, not {timeout!r}")
    return executor.Wait(replicas, max(1, round(timeout * 1000)))  # WAIT 0 waits forever


def _mapped(cls: type) -> Mapper:
    """The mapper of ``cls`` or of its nearest mapped base class."""
    for klass in cls.__mro__:
        if "__redisca_mapper__" in klass.__dict__:
            return mapper_of(klass)
    return mapper_of(cls)  # raises, naming the class


def _init_arguments(
    mapper: Mapper, ident: str, values: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``__init__``'s keyword arguments for a new entity with these values (attrs takes a
    private ``_x`` as ``x``), and the values of attributes ``__init__`` does not take.
    A required attribute missing from ``values`` is refused here, naming it."""
    by_name = {a.name: a for a in attrs.fields(mapper.class_)}
    init = {by_name[mapper.id_attr].alias: ident}
    late: dict[str, Any] = {}
    for name, value in values.items():
        if by_name[name].init:
            init[by_name[name].alias] = value
        else:
            late[name] = value
    missing = [
        a.name
        for a in by_name.values()
        if a.init and a.default is attrs.NOTHING and a.alias not in init
    ]
    if missing:
        raise InvalidRequestError(
            f"{mapper.key(ident).decode()} does not exist, and creating it needs "
            f"{', '.join(missing)} (no default)"
        )
    return init, late


__all__ = ["CommandResult", "Session"]

"""Flask integration: one session per request, autosave, 404 helpers, pagination.

Importing this module imports Flask; ``import redisca`` does not (``redisca.FlaskRedisca``
is resolved on first use), so Flask stays optional: the ``flask`` extra.

The request lifecycle (the Flask page of the documentation tells it in full):

- the first use of ``ext.session`` in a request (or in an app context outside any
  request, such as a CLI command) creates a :class:`~redisca.Session` for it;
- with ``autosave=True``, an ``after_request`` function commits it before the
  response leaves, unless the request raised; a failing commit replaces the response;
- ``teardown_request`` (for a request's session) and ``teardown_appcontext`` (for any
  left) close and remove it, whatever happened.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Generic, NoReturn, TypeVar, cast

from flask import Flask, abort, current_app, g, has_request_context, request
from flask.signals import got_request_exception
from flask.wrappers import Response
from werkzeug.exceptions import Conflict

from .conf import CLUSTER_ENV, Client, cluster_flag, make_client
from .errors import (
    ConflictError,
    IntegrityError,
    MultipleResultsFound,
    NotFound,
    QueryError,
    RediscaError,
    UncommittedChangesWarning,
    ValidationError,
)
from .inspection import inspect
from .session import Query, Session

T = TypeVar("T")

#: The key of the extension's per-app state in ``app.extensions``.
EXTENSION_KEY = "redisca"
_CLUSTER_KEY = CLUSTER_ENV  # app.config's: the app's client is a RedisCluster
_SCOPES = "_redisca_scopes"  # attribute of flask.g: a stack of _Scope
DEFAULT_PER_PAGE = 20
DEFAULT_MAX_PER_PAGE = 100


class ConfigurationError(RediscaError, RuntimeError):
    """The extension cannot work with this app: no connection configured, or no ``init_app``."""


class CommitConflict(Conflict):
    """The 409 that replaces the response when the autosave commit raises
    :class:`~redisca.IntegrityError` or :class:`~redisca.ConflictError` and the app has
    no handler for that error. An ``errorhandler(409)`` receives this exception."""

    def __init__(self, original_exception: RediscaError) -> None:
        super().__init__(description=_conflict_description(original_exception))
        #: The commit's error.
        self.original_exception = original_exception


def _conflict_description(exc: RediscaError) -> str:
    # Neither the value nor its owner's id: the owner is someone else's record.
    field = getattr(exc, "field", None)
    if field is not None:
        return f"The {field} you gave is already taken."
    if isinstance(exc, ConflictError):
        return "The data changed while this request was saving it; try again."
    return "This record already exists."


class _Scope:
    """One session and what happened to it in its request (or app context)."""

    __slots__ = ("committed", "failed", "raised", "request", "session")

    def __init__(self, session: Session, request: object | None) -> None:
        self.session = session
        self.request = request  # the Request object, or None for an app context
        self.raised = False  # the request raised (handled or not)
        self.committed = False  # the autosave hook ran its commit
        self.failed = False  # ... and that commit raised


class _AppState:
    """What ``init_app`` keeps in ``app.extensions["redisca"]``."""

    def __init__(self, extension: FlaskRedisca, client: Client) -> None:
        self.extension = extension
        self.client = client


def _cluster_setting(config: Mapping[str, Any]) -> bool:
    """``app.config["REDISCA_CLUSTER"]``: whether ``REDISCA_URL`` (or ``REDISCA``) names
    a node of a Redis Cluster (default ``False``; values as :func:`redisca.conf.cluster_flag`)."""
    try:
        return cluster_flag(config.get(_CLUSTER_KEY), f"app.config[{_CLUSTER_KEY!r}]")
    except ValidationError as exc:
        raise ConfigurationError(str(exc)) from None


def _client_from_config(config: Mapping[str, Any], cluster: bool | None = None) -> Client:
    """``REDISCA_URL`` (with ``REDISCA`` as extra options), else ``REDISCA`` alone; a
    ``RedisCluster`` when ``cluster`` (``None``: ``REDISCA_CLUSTER``) says so."""
    url = config.get("REDISCA_URL")
    options = config.get("REDISCA")
    if cluster is None:
        cluster = _cluster_setting(config)
    if options is not None and not isinstance(options, Mapping):
        raise ConfigurationError(
            "app.config['REDISCA'] must be a dict of redis.Redis() keyword arguments, "
            f"got {type(options).__name__}"
        )
    if url and not isinstance(url, str):
        raise ConfigurationError("app.config['REDISCA_URL'] must be a str")
    if not url and options is None:
        raise ConfigurationError(
            "FlaskRedisca needs a connection: set app.config['REDISCA_URL'] "
            "(e.g. 'redis://localhost:6379/0') or app.config['REDISCA'] "
            "(redis.Redis() keyword arguments) before init_app(app)"
        )
    try:
        return make_client(url or None, cluster=cluster, **dict(options or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot make a Redis client from the app's config: {exc}"
        ) from exc


def _current_request() -> object | None:
    if not has_request_context():
        return None
    return cast(object, cast(Any, request)._get_current_object())


def _scopes() -> list[_Scope]:
    return cast(list[_Scope], g.setdefault(_SCOPES, []))


def _request_scope(*, create: Session | None = None) -> _Scope | None:
    """The current request's scope; with ``create``, made around that session if absent."""
    req = _current_request()
    if req is None:
        return None
    scopes = _scopes()
    if scopes and scopes[-1].request is req:
        return scopes[-1]
    if create is None:
        return None
    scopes.append(_Scope(create, req))
    return scopes[-1]


def _keys(objs: Any) -> list[str]:
    return sorted(inspect(obj).key for obj in objs)


def _leftovers(session: Session) -> list[str]:
    """What a commit would still write, in words (empty: nothing)."""
    try:
        found = [f"new {k}" for k in _keys(session.new)]
        found += [f"changed {k}" for k in _keys(session.dirty)]
        found += [f"deleted {k}" for k in _keys(session.deleted)]
        found += [f"command {c[1][0]!r}" for c in session.queued_commands()]
    except Exception as exc:  # a report must not fail the teardown
        return [f"(could not list the changes: {exc!r})"]
    return found


class FlaskRedisca:
    """redisca for a Flask app: ``ext.session`` per request, optional autosave, helpers.

    ``app`` may be given now or later to :meth:`init_app` (app factories); one
    extension object can serve several apps, each with its own Redis client.
    """

    def __init__(self, app: Flask | None = None, *, autosave: bool = False) -> None:
        self.autosave = autosave
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Make the app's client from its config and register the request hooks.

        Call it before registering your own ``after_request`` functions when
        ``autosave`` is on: Flask runs them in reverse order, so the commit then comes
        after theirs (their changes are saved).
        """
        if EXTENSION_KEY in app.extensions:
            raise ConfigurationError(f"a FlaskRedisca is already registered on app {app.name!r}")
        client = _client_from_config(app.config)
        app.extensions[EXTENSION_KEY] = _AppState(self, client)
        weakref.finalize(app, client.close)  # the pool's sockets go with the app
        app.teardown_request(self._teardown_request)
        app.teardown_appcontext(self._teardown_appcontext)
        if self.autosave:
            app.after_request(self._autosave)
            self._watch_exceptions(app)

    # -- the session -----------------------------------------------------------

    def _state(self) -> _AppState:
        state = current_app.extensions.get(EXTENSION_KEY)
        if state is None:
            raise ConfigurationError(
                f"FlaskRedisca.init_app(app) was not called for app {current_app.name!r}"
            )
        if state.extension is not self:
            raise ConfigurationError(
                f"app {current_app.name!r} is registered with another FlaskRedisca object"
            )
        return cast(_AppState, state)

    @property
    def client(self) -> Client:
        """The current app's Redis client (one per app, made by :meth:`init_app`)."""
        return self._state().client

    @property
    def session(self) -> Session:
        """The session of the current request (or app context), made on first use."""
        state = self._state()
        req = _current_request()
        scopes = _scopes()
        if scopes and scopes[-1].request is req:
            return scopes[-1].session
        scopes.append(_Scope(Session(state.client), req))
        return scopes[-1].session

    # -- request hooks -----------------------------------------------------------

    def _watch_exceptions(self, app: Flask) -> None:
        """Note every exception of a request, handled or not, so autosave skips it.

        Flask reports unhandled ones (``got_request_exception``) but has no hook for
        those an error handler answers (``abort(404)``, ``errorhandler``): they pass
        through ``handle_user_exception``, wrapped here on this app object only.
        """
        got_request_exception.connect(self._on_exception, app)
        original = app.handle_user_exception

        def handle_user_exception(e: Exception) -> Any:
            self._on_exception(app)
            return original(e)

        app.handle_user_exception = handle_user_exception  # type: ignore[method-assign]

    def _on_exception(self, sender: Flask, **extra: Any) -> None:
        if sender.extensions.get(EXTENSION_KEY) is None:
            return
        scope = _request_scope() or _request_scope(create=Session(self._state().client))
        if scope is not None:
            scope.raised = True

    def _autosave(self, response: Response) -> Response:
        """Commit the request's session before its response is sent (autosave)."""
        scope = _request_scope()
        if scope is None or scope.raised or scope.committed:
            return response
        scope.committed = True
        try:
            scope.session.commit()
        except Exception as exc:
            scope.failed = True
            return self._commit_failed(exc)
        return response

    def _commit_failed(self, exc: Exception) -> Response:
        """The response for a failed autosave commit (called while handling ``exc``).

        The app's own handler for the error wins; else a conflict is a 409 (through the
        app's 409 handler if any) and anything else is re-raised for Flask's unhandled
        error path: logged, ``got_request_exception``, 500.
        """
        app = cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
        try:
            # Re-raises ``exc`` itself when the app has no handler for it.
            rv = app.handle_user_exception(exc)
        except Exception as again:
            if again is not exc or not isinstance(exc, IntegrityError | ConflictError):
                raise
            rv = app.handle_user_exception(CommitConflict(exc))
        return app.make_response(rv)

    def _teardown_request(self, exc: BaseException | None) -> None:
        req = _current_request()
        scopes = g.get(_SCOPES)
        while req is not None and scopes and scopes[-1].request is req:
            self._end(scopes.pop(), exc)

    def _teardown_appcontext(self, exc: BaseException | None) -> None:
        scopes = g.get(_SCOPES)
        while scopes:
            self._end(scopes.pop(), exc)

    def _end(self, scope: _Scope, exc: BaseException | None) -> None:
        """Close a session, first warning (autosave) about changes it would drop."""
        # The session closes without Session.close()'s UncommittedChangesWarning: with
        # autosave, this warning (of the same class) says where the changes came from;
        # without, a view ends its unit of work by not committing (a form answered
        # with its errors): dropping is the rule there, and warning every such request
        # would be noise.
        try:
            if self.autosave and exc is None and not (scope.raised or scope.failed):
                leftovers = _leftovers(scope.session)
                if leftovers:
                    where = (
                        "made after the autosave commit"
                        if scope.request is not None
                        else "made outside any request (autosave commits only at the end "
                        "of requests)"
                    )
                    warnings.warn(
                        f"FlaskRedisca dropped changes {where}; call "
                        f"ext.session.commit() to keep them: {', '.join(leftovers)}",
                        UncommittedChangesWarning,
                        stacklevel=2,
                    )
        finally:
            scope.session._close(warn=False)

    # -- helpers -------------------------------------------------------------------

    def get_or_404(self, cls: type[T], id: str | int, *, description: str | None = None) -> T:
        """``session.get(cls, id)``, or a 404 when there is no such entity."""
        try:
            found = self.session.get(cls, id)
        except ValidationError:  # an id the class can never have
            found = None
        if found is None:
            _abort_404(description)
        return found

    def first_or_404(self, query: Query[T], *, description: str | None = None) -> T:
        """``query.first()``, or a 404 when nothing matches."""
        return first_or_404(query, description=description)

    def one_or_404(self, query: Query[T], *, description: str | None = None) -> T:
        """``query.one()``, or a 404 when nothing or more than one matches."""
        return one_or_404(query, description=description)

    def paginate(
        self,
        query: Query[T],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = DEFAULT_MAX_PER_PAGE,
        error_out: bool = True,
        after: Any = None,
    ) -> Pagination[T]:
        """One page of ``query``: see :func:`paginate`."""
        return paginate(
            query,
            page=page,
            per_page=per_page,
            max_per_page=max_per_page,
            error_out=error_out,
            after=after,
        )


def _abort_404(description: str | None) -> NoReturn:
    if description is None:
        abort(404)
    abort(404, description=description)


def first_or_404(query: Query[T], *, description: str | None = None) -> T:
    """``query.first()``, or a 404 when nothing matches."""
    found = query.first()
    if found is None:
        _abort_404(description)
    return found


def one_or_404(query: Query[T], *, description: str | None = None) -> T:
    """``query.one()``, or a 404 when nothing or more than one matches (as Flask-SQLAlchemy)."""
    try:
        return query.one()
    except (NotFound, MultipleResultsFound):
        _abort_404(description)


class Pagination(Generic[T]):
    """One page of a query's results, and what a template needs to link the others."""

    def __init__(
        self,
        query: Query[T],
        *,
        page: int,
        per_page: int,
        max_per_page: int | None,
        total: int,
        items: list[T],
        after: Any = None,
        next_after: str | None = None,
    ) -> None:
        #: The query this is a page of.
        self.query = query
        #: The page number, from 1.
        self.page = page
        #: The number of results per page (after the ``max_per_page`` cap).
        self.per_page = per_page
        #: The cap on ``per_page`` used for this page and its neighbours.
        self.max_per_page = max_per_page
        #: How many results the query has, on all pages.
        self.total = total
        #: This page's results.
        self.items = items
        #: Keyset pages: the instance or id this page starts after (``None``: numbered).
        self.after = after
        #: The ``after`` of the next page (keyset pagination), ``None`` on the last one.
        self.next_after = next_after

    @property
    def pages(self) -> int:
        """The number of pages (0 when there are no results)."""
        return math.ceil(self.total / self.per_page) if self.total else 0

    @property
    def first(self) -> int:
        """The 1-based number of this page's first result (0 on an empty page)."""
        return (self.page - 1) * self.per_page + 1 if self.items else 0

    @property
    def last(self) -> int:
        """The 1-based number of this page's last result (0 on an empty page)."""
        return self.first + len(self.items) - 1 if self.items else 0

    @property
    def has_prev(self) -> bool:
        """Whether a page comes before this one."""
        return self.page > 1

    @property
    def has_next(self) -> bool:
        """Whether a page comes after this one."""
        if self.after is not None:
            return self.next_after is not None
        return self.page < self.pages

    @property
    def prev_num(self) -> int | None:
        """The previous page's number, or None on the first page."""
        return self.page - 1 if self.has_prev else None

    @property
    def next_num(self) -> int | None:
        """The next page's number, or None on the last page."""
        return self.page + 1 if self.has_next else None

    def prev(self, *, error_out: bool = False) -> Pagination[T]:
        """The previous page (loads it)."""
        return self._other(self.page - 1, error_out)

    def next(self, *, error_out: bool = False) -> Pagination[T]:
        """The next page (loads it); a keyset page's next one starts after its last item."""
        if self.after is not None:
            return paginate(
                self.query,
                page=self.page + 1,
                per_page=self.per_page,
                max_per_page=self.max_per_page,
                error_out=error_out,
                after=self.next_after,
            )
        return self._other(self.page + 1, error_out)

    def _other(self, page: int, error_out: bool) -> Pagination[T]:
        return paginate(
            self.query,
            page=page,
            per_page=self.per_page,
            max_per_page=self.max_per_page,
            error_out=error_out,
        )

    def iter_pages(
        self,
        *,
        left_edge: int = 2,
        left_current: int = 2,
        right_current: int = 4,
        right_edge: int = 2,
    ) -> Iterator[int | None]:
        """Page numbers for a pager: the edges and the pages around the current one,
        ``None`` where numbers are left out (Flask-SQLAlchemy's rule)."""
        pages_end = self.pages + 1
        if pages_end == 1:
            return
        left_end = min(1 + left_edge, pages_end)
        yield from range(1, left_end)
        if left_end == pages_end:
            return
        mid_start = max(left_end, self.page - left_current)
        mid_end = min(self.page + right_current + 1, pages_end)
        if mid_start > left_end:
            yield None
        yield from range(mid_start, mid_end)
        if mid_end == pages_end:
            return
        right_start = max(mid_end, pages_end - right_edge)
        if right_start > mid_end:
            yield None
        yield from range(right_start, pages_end)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __repr__(self) -> str:
        return (
            f"<Pagination page={self.page}/{self.pages} "
            f"per_page={self.per_page} total={self.total}>"
        )


def _arg(name: str, given: int | None, default: int, error_out: bool) -> int:
    """``given``, else the request's ``?name=`` argument, else ``default``."""
    if given is not None:
        return given
    if not has_request_context():
        return default
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        if error_out:
            abort(404)
        return default


def paginate(
    query: Query[T],
    *,
    page: int | None = None,
    per_page: int | None = None,
    max_per_page: int | None = DEFAULT_MAX_PER_PAGE,
    error_out: bool = True,
    after: Any = None,
) -> Pagination[T]:
    """One page of ``query`` (its own offset and limit are replaced).

    ``page`` (from 1) and ``per_page`` default to the request's ``?page=`` and
    ``?per_page=`` arguments, else 1 and 20; ``per_page`` is capped at ``max_per_page``
    (``None``: no cap). With ``error_out`` a page or per_page below 1, a malformed
    argument, or a page past the last is a 404; without it they fall back to page 1,
    20 per page, or an empty page. Two round trips: the count, then the page (ids and
    entities in one step); when writes land between the two, ``total`` is adjusted to
    agree with the page read (a short page is the last one).

    ``after`` (an instance or an id; default: the request's ``?after=``) asks for the
    keyset page that starts after it: its cost does not grow with its depth, and
    ``next_after`` is the next page's cursor. An ``after`` in no index is a 404 with
    ``error_out``, the first page without it.
    """
    page = _arg("page", page, 1, error_out)
    per_page = _arg("per_page", per_page, DEFAULT_PER_PAGE, error_out)
    if max_per_page is not None:
        per_page = min(per_page, max_per_page)
    if page < 1:
        if error_out:
            abort(404)
        page = 1
    if per_page < 1:
        if error_out:
            abort(404)
        per_page = DEFAULT_PER_PAGE
    whole = query.offset(0).limit(None)
    total = whole.count()
    if after is None and has_request_context():
        after = request.args.get("after") or None
    if after is not None:
        return _keyset(
            whole,
            after,
            page=page,
            per_page=per_page,
            max_per_page=max_per_page,
            total=total,
            error_out=error_out,
        )
    offset = (page - 1) * per_page
    items = whole.offset(offset).limit(per_page).all() if offset < total else []
    if items:  # writes between the two reads: make the count agree with the page read
        total = offset + len(items) if len(items) < per_page else max(total, offset + per_page)
    if not items and page != 1 and error_out:
        abort(404)
    last = inspect(items[-1]).id if items and offset + len(items) < total else None
    return Pagination(
        query,
        page=page,
        per_page=per_page,
        max_per_page=max_per_page,
        total=total,
        items=items,
        next_after=last,
    )


def _keyset(
    whole: Query[T],
    after: Any,
    *,
    page: int,
    per_page: int,
    max_per_page: int | None,
    total: int,
    error_out: bool,
) -> Pagination[T]:
    """The page after ``after``: one more row read tells whether another follows."""
    try:
        items = whole.after(after).limit(per_page + 1).all()
    except QueryError:  # a cursor from a URL that names no entity of the query
        if error_out:
            abort(404)
        items, after = whole.limit(per_page + 1).all(), None
    more = len(items) > per_page
    items = items[:per_page]
    next_after = inspect(items[-1]).id if more else None
    return Pagination(
        whole,
        page=page,
        per_page=per_page,
        max_per_page=max_per_page,
        total=total,
        items=items,
        after=after,
        next_after=next_after,
    )


__all__ = [
    "EXTENSION_KEY",
    "CommitConflict",
    "ConfigurationError",
    "FlaskRedisca",
    "Pagination",
    "UncommittedChangesWarning",
    "first_or_404",
    "one_or_404",
    "paginate",
]
